"""``ota-build demo``: the whole local flow on a generated sample image."""

from __future__ import annotations

import json
import os

from .config import load_config
from .package import package_image, verify_file
from .record import RECORD_NAME, new_record, write_record
from .sample import make_sample_rootfs
from .signing import Keyring, generate_key, make_signer

SAMPLE_CONFIG = {
    "Comments": "Sample configuration written by 'ota-build demo'",
    "description": "meta-ota demo image",
    "name": "Potenco-demo",
    "version": "1.0",
    "url": "dummy",
    "deviceTypeId": "a6542896-8464-48e1-b12f-664a57e4e703",
    "partnerId": "4f7de484-cf23-478d-90a7-412104d5120b",
    "imageFiles": {"A": "hub_update.bin"},
}


def _step(n: int, text: str) -> None:
    print(f"[{n}] {text}", flush=True)


def run_demo(workdir: str) -> int:
    """Run the local demo in ``workdir``; print each step; return 0 on success."""
    os.makedirs(workdir, exist_ok=True)
    conf = os.path.join(workdir, "partner-ota-conf.json")
    with open(conf, "w", encoding="utf-8") as fh:
        json.dump(SAMPLE_CONFIG, fh, indent=4)
    _step(1, f"config: {conf}")
    rootfs = make_sample_rootfs(os.path.join(workdir, "core-image-minimal-sample.rootfs.tar.gz"))
    _step(2, f"sample root filesystem: {rootfs} ({os.path.getsize(rootfs)} bytes)")
    private, public = os.path.join(workdir, "dev-signing.key.pem"), os.path.join(workdir, "dev-signing.pub.pem")
    key = generate_key("ed25519", private, public, overwrite=True)
    _step(3, f"development key pair (Ed25519, key id {key.key_id.hex()[:16]}): {private}, {public}")
    cfg = load_config(conf)
    record = new_record(cfg, build_number=2, debug=True)
    record_path = os.path.join(workdir, RECORD_NAME)
    write_record(record, record_path)
    _step(4, f"OTA record: {record_path} (version {record['version']}, versionNumber {record['versionNumber']})")
    out = os.path.join(workdir, cfg.image_file)
    result = package_image(rootfs, out, make_signer(private), record["type"], int(record["versionNumber"]), record)
    _step(5, f"signed image: {out} (header {result.header.header_length} bytes + payload {result.header.payload_length})")
    extracted = os.path.join(workdir, "ota_type_5.img")
    verify_file(out, Keyring.from_files([public]), expected_type=5, extract_to=extracted)
    _step(6, f"verified as a device would; payload extracted to {extracted}")
    print(f"\nAll files are in {os.path.abspath(workdir)}.")
    print("With a real build: add meta-ota to bblayers.conf, INHERIT += \"ota\" in local.conf, then "
          "'bitbake core-image-minimal' leaves hub_update.bin in DEPLOY_DIR_IMAGE (see README.md).")
    return 0
