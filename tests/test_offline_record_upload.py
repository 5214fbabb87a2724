"""A record made offline (the BitBake layer's path) is uploaded with the versionNumber it was built with."""

from __future__ import annotations

import json
import os

from .conftest import assert_one_line_error, run_cli


def test_offline_record_registers_with_its_version_number(partner, keys):
    p = partner
    env = {**p.env}
    # Offline: no server at record time (as in a BitBake build).
    conf = json.loads(p.conf.read_text())
    offline_conf = p.dir / "offline.json"
    offline_conf.write_text(json.dumps({k: v for k, v in conf.items() if k != "server"}))
    run_cli("ota-build", "record", "-c", str(offline_conf), "-n", "7", "-o", str(p.dir / "full_ota_record.json"),
            cwd=p.dir, check=0)
    record = json.loads((p.dir / "full_ota_record.json").read_text())
    assert record["versionNumber"] == "10000000000007"
    rootfs = p.dir / "rootfs.tar.gz"
    rootfs.write_bytes(os.urandom(50_000))
    run_cli("ota-build", "package", str(rootfs), "-r", str(p.dir / "full_ota_record.json"),
            "-k", keys["ed25519"]["private"], "-o", str(p.dir / "hub_update.bin"), check=0)
    run_cli("partner-ota-hub-uploader", "-c", str(p.conf), "-s", "-n", "7", "--uploadOTAImage",
            cwd=p.dir, env=env, check=0)
    listing = run_cli("partner-ota-hub-deploy", "-c", str(p.conf), "--list", env=env, check=0).stdout
    assert "1.0.7" in listing
    record = json.loads((p.dir / "full_ota_record.json").read_text())
    assert record["versionNumber"] == "10000000000007" and "/repository/" in record["url"]

    # An older offline build afterwards is refused by the server with one clear line.
    for name in ("full_ota_record.json", "hub_update.bin"):
        (p.dir / name).unlink()
    run_cli("ota-build", "record", "-c", str(offline_conf), "-n", "7", "-o", str(p.dir / "full_ota_record.json"),
            "--version-number", "5", cwd=p.dir, check=0)
    rec = json.loads((p.dir / "full_ota_record.json").read_text())
    rec["version"] = "1.0.8"
    (p.dir / "full_ota_record.json").write_text(json.dumps(rec))
    run_cli("ota-build", "package", str(rootfs), "-r", str(p.dir / "full_ota_record.json"),
            "-k", keys["ed25519"]["private"], "-o", str(p.dir / "hub_update.bin"), check=0)
    proc = run_cli("partner-ota-hub-uploader", "-c", str(p.conf), "-s", "-n", "8", "--uploadOTAImage",
                   cwd=p.dir, env=env)
    assert_one_line_error(proc, 3, "HTTP 409", "versionNumber")


def test_serve_rejects_a_bad_port(tmp_path):
    proc = run_cli("ota-build", "serve", "--port", "99999", "--data-dir", str(tmp_path / "d"))
    assert_one_line_error(proc, 2, "--port", "99999")
