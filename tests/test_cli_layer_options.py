"""Library options the BitBake layer uses: ``record --from`` and ``pubkey``."""

from __future__ import annotations

import json

import pytest

from .conftest import ALGORITHMS, assert_one_line_error, run_cli

PREMADE = {
    "createdTimestamp": 1572280052532, "description": "OTA description", "id": "11561",
    "name": "Potenco-test", "partnerId": "4f7de484-cf23-478d-90a7-412104d5620b", "tags": [],
    "type": 5, "updatedTimestamp": 1572280052532, "url": "", "version": "1.0.2d", "versionNumber": "7112",
}


def test_record_from_premade_copies_it_unchanged(tmp_path):
    src = tmp_path / "full-ota-record.json"
    src.write_text(json.dumps(PREMADE))
    out = tmp_path / "out" / "full_ota_record.json"
    out.parent.mkdir()
    proc = run_cli("ota-build", "record", "--from", str(src), "-o", str(out), check=0)
    assert proc.stdout.strip() == str(out)
    assert json.loads(out.read_text()) == PREMADE          # the server's id and versionNumber are kept


def test_record_from_invalid_premade_is_one_line(tmp_path):
    bad = dict(PREMADE, versionNumber=7112)                 # must be a string of digits
    src = tmp_path / "full_ota_record.json"
    src.write_text(json.dumps(bad))
    proc = run_cli("ota-build", "record", "--from", str(src), "-o", str(tmp_path / "x.json"))
    assert_one_line_error(proc, 2, "versionNumber")


def test_record_without_build_number_or_from(seed_config, tmp_path):
    proc = run_cli("ota-build", "record", "-c", str(seed_config), "-s", cwd=tmp_path)
    assert_one_line_error(proc, 2, "-n/--buildNum")


@pytest.mark.parametrize("backend", ["openssl", "cryptography"])
@pytest.mark.parametrize("alg", ALGORITHMS)
def test_pubkey_matches_the_generated_public_key(keys, tmp_path, alg, backend):
    out = tmp_path / "pub.pem"
    run_cli("ota-build", "pubkey", "-k", keys[alg]["private"], "--backend", backend, "-o", str(out), check=0)
    assert out.read_bytes().strip() == open(keys[alg]["public"], "rb").read().strip()
    proc = run_cli("ota-build", "pubkey", "-k", keys[alg]["private"], "--backend", backend, check=0)
    assert proc.stdout.strip() == out.read_text().strip()


def test_pubkey_missing_key_is_one_line(tmp_path):
    proc = run_cli("ota-build", "pubkey", "-k", str(tmp_path / "nope.pem"), "--backend", "openssl")
    assert_one_line_error(proc, 2, "nope.pem", "not found")
