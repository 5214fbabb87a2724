"""full_ota_record.json: fields, types, versions, reproducibility, locations."""

from __future__ import annotations

import json
import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ota_build.core.config import load_config
from ota_build.core.errors import RecordError, UsageError
from ota_build.core.record import dumps, load_record, new_record
from ota_build.core.version import derive_version_number, version_string

from .conftest import assert_one_line_error, run_cli, write_config

SEED_TABLE = ["createdTimestamp", "description", "id", "name", "partnerId", "tags", "type",
              "updatedTimestamp", "url", "version", "versionNumber"]


def test_record_has_every_field_with_the_seed_types(seed_config, tmp_path):
    proc = run_cli("ota-build", "record", "-c", str(seed_config), "-n", "2", "-d", "-s", cwd=tmp_path, check=0)
    path = tmp_path / "full_ota_record.json"
    assert proc.stdout.strip() == str(path)
    rec = json.loads(path.read_text())
    assert sorted(rec) == SEED_TABLE
    assert rec["version"] == "1.0.2d"                  # the seed's example
    assert isinstance(rec["createdTimestamp"], int) and rec["createdTimestamp"] > 1_500_000_000_000
    assert rec["createdTimestamp"] == rec["updatedTimestamp"]
    assert rec["type"] == 5 and isinstance(rec["type"], int)
    assert rec["tags"] == []
    assert rec["url"] == ""
    assert isinstance(rec["id"], str) and rec["id"].isdigit()
    assert isinstance(rec["versionNumber"], str) and rec["versionNumber"].isdigit()
    assert rec["name"] == "Potenco-test"
    assert rec["partnerId"] == "4f7de484-b438-578d-90a7-422104d5120i"
    assert rec["description"] == "OTA image description"
    # Written as the original does: sorted keys, indent 4, ": " separators.
    assert path.read_text() == json.dumps(rec, sort_keys=True, indent=4, separators=(",", ": ")) + "\n"
    # Secrets never reach the record.
    text = path.read_text()
    assert "12334" not in text and "NGY3" not in text and "john@" not in text


def test_prod_build_has_no_d(seed_config, tmp_path):
    run_cli("ota-build", "record", "-c", str(seed_config), "-n", "7", "-s", cwd=tmp_path, check=0)
    assert json.loads((tmp_path / "full_ota_record.json").read_text())["version"] == "1.0.7"


def test_source_date_epoch_makes_record_reproducible(seed_config, tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"r{i}.json"
        run_cli("ota-build", "record", "-c", str(seed_config), "-n", "2", "-o", str(out),
                env={"SOURCE_DATE_EPOCH": "1572280052"}, check=0)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert json.loads(outs[0])["createdTimestamp"] == 1572280052000


def test_explicit_version_number(seed_config, tmp_path):
    out = tmp_path / "r.json"
    run_cli("ota-build", "record", "-c", str(seed_config), "-n", "2", "-o", str(out), "--version-number", "7112", check=0)
    assert json.loads(out.read_text())["versionNumber"] == "7112"
    proc = run_cli("ota-build", "record", "-c", str(seed_config), "-n", "2", "-o", str(tmp_path / "x.json"),
                   "--version-number", "12a")
    assert_one_line_error(proc, 2, "versionNumber", "'12a'")


def test_version_number_scheme_example():
    assert derive_version_number("1.0", 2) == 10_000_000_000_002
    assert derive_version_number("1", 0) == derive_version_number("1.0.0", 0)


versions = st.tuples(st.integers(0, 999), st.integers(0, 999), st.integers(0, 999))
builds = st.integers(0, 10**7 - 1)


@given(versions, builds, versions, builds)
def test_version_number_grows_with_every_newer_build(v1, b1, v2, b2):
    """Newer = higher config version, or same version and higher build number."""
    n1 = derive_version_number(".".join(map(str, v1)), b1)
    n2 = derive_version_number(".".join(map(str, v2)), b2)
    assert (n1 < n2) == ((v1, b1) < (v2, b2))
    assert n1 < 2**64


def test_non_numeric_version_needs_explicit_number(tmp_path):
    path = write_config(tmp_path, version="1.0-rc1")
    proc = run_cli("ota-build", "record", "-c", str(path), "-n", "1", "-s", cwd=tmp_path)
    assert_one_line_error(proc, 2, "field 'version'", "--version-number")
    run_cli("ota-build", "record", "-c", str(path), "-n", "1", "-s", "--version-number", "5", cwd=tmp_path, check=0)
    assert json.loads((tmp_path / "full_ota_record.json").read_text())["version"] == "1.0-rc1.1"


@pytest.mark.parametrize("bad", ["-1", "abc", "1.5", "99999999"])
def test_bad_build_number(seed_config, tmp_path, bad):
    proc = run_cli("ota-build", "record", "-c", str(seed_config), "-n", bad, "-s", cwd=tmp_path)
    assert_one_line_error(proc, 2, "build number")


def test_existing_record_is_kept_unless_forced(seed_config, tmp_path):
    run_cli("ota-build", "record", "-c", str(seed_config), "-n", "1", "-s", cwd=tmp_path, check=0)
    before = (tmp_path / "full_ota_record.json").read_bytes()
    proc = run_cli("ota-build", "record", "-c", str(seed_config), "-n", "2", "-s", cwd=tmp_path)
    assert_one_line_error(proc, 2, "already exists")
    assert (tmp_path / "full_ota_record.json").read_bytes() == before
    run_cli("ota-build", "record", "-c", str(seed_config), "-n", "2", "-s", "--force", cwd=tmp_path, check=0)
    assert json.loads((tmp_path / "full_ota_record.json").read_text())["version"] == "1.0.2"


def test_hyphenated_record_counts_as_existing(seed_config, tmp_path):
    (tmp_path / "full-ota-record.json").write_text("{}")
    proc = run_cli("ota-build", "record", "-c", str(seed_config), "-n", "2", "-s", cwd=tmp_path)
    assert_one_line_error(proc, 2, "full-ota-record.json", "already exists")


def test_load_accepts_both_names(seed_config, tmp_path):
    cfg = load_config(str(seed_config), env={})
    rec = new_record(cfg, 3)
    for name in ("full_ota_record.json", "full-ota-record.json"):
        d = tmp_path / name.split(".")[0]
        d.mkdir()
        (d / name).write_text(dumps(rec))
        assert load_record(str(d)) == rec
        assert load_record(str(d / name)) == rec


def test_load_rejects_bad_record(tmp_path, seed_config):
    rec = new_record(load_config(str(seed_config), env={}), 3)
    rec["versionNumber"] = 7112  # an integer, not the seed's string
    path = tmp_path / "full_ota_record.json"
    path.write_text(json.dumps(rec))
    with pytest.raises(RecordError, match="field 'versionNumber': must be of type string"):
        load_record(str(path))


FAKE_BITBAKE = """#!/bin/sh
# Prints what 'bitbake -e' prints around TMPDIR (real output format), for the discovery code.
if [ "$1" = "-e" ]; then
  echo '# $TMPDIR [3 operations]'
  echo '#   set /work/poky/meta/conf/bitbake.conf:12'
  echo 'TMPDIR_BOGUS="/nope"'
  echo 'TMPDIR="{tmpdir}"'
  echo 'export TOPDIR="/somewhere"'
  exit 0
fi
exit 1
"""


def test_default_location_is_bitbake_tmpdir(seed_config, tmp_path):
    tmpdir = tmp_path / "build" / "tmp"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "bitbake"
    fake.write_text(FAKE_BITBAKE.format(tmpdir=tmpdir))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{bindir}:{os.environ['PATH']}"}
    proc = run_cli("partner-ota-hub-uploader", "-c", str(seed_config), "-n", "2", "--createOTARecord",
                   cwd=tmp_path, env=env, check=0)
    assert (tmpdir / "full_ota_record.json").is_file(), proc.stdout


def test_no_bitbake_gives_hint(seed_config, tmp_path):
    env = {"PATH": os.path.dirname(os.path.realpath(os.sys.executable))}
    proc = run_cli("ota-build", "record", "-c", str(seed_config), "-n", "2", cwd=tmp_path, env=env)
    assert_one_line_error(proc, 2, "TMPDIR", "-s")


def test_version_string():
    assert version_string("1.0", 2, True) == "1.0.2d"
    assert version_string("2.1", 15) == "2.1.15"
    with pytest.raises(UsageError):
        derive_version_number("1.1000", 1)


def test_version_number_is_an_int_inside_and_a_string_in_the_file(seed_config, tmp_path):
    from ota_build.core.record import record_to_json, write_record

    rec = new_record(load_config(str(seed_config), env={}), 2, version_number="7112")
    assert rec["versionNumber"] == 7112
    path = tmp_path / "full_ota_record.json"
    write_record(rec, str(path))
    assert json.loads(path.read_text())["versionNumber"] == "7112"
    assert load_record(str(path))["versionNumber"] == 7112
    assert record_to_json(rec)["versionNumber"] == "7112" and rec["versionNumber"] == 7112  # no change in place
