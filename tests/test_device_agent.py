"""The device agent against the real OTA server (the seed 003 journey), and
against a hostile server serving bad images."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import requests

from ota_build.core.config import load_config
from ota_build.device.agent import Agent
from ota_build.core.bootenv import parse_env_text
from ota_build.device.bootsim import boot
from ota_build.device.config import load_agent_config
from ota_build.device.localapi import LocalApi
from ota_build.core.errors import ConfigError
from ota_build.core.package import package_image
from ota_build.core.record import new_record, write_record
from ota_build.cli.sample import make_sample_rootfs
from ota_build.core.signing import make_signer

from .conftest import run_cli
from .serverutil import Partner


def make_device(tmp: Path, server_url: str, token: str, public_key: str, device_id: str = "dev-1",
                running_version_number: int = 0, device_type: str = "dt", **extra: Any) -> Path:
    """A simulated device: file-backed A/B slots, a boot env file, /etc/full_ota_record.json."""
    root = tmp / device_id
    (root / "etc").mkdir(parents=True)
    (root / "slot-a.img").write_bytes(b"ACTIVE-ROOTFS" * 100)
    (root / "slot-b.img").write_bytes(b"")
    (root / "bootenv").write_text("ota_slot=a\n")
    (root / "cmdline").write_text("console=ttyS0,115200 root=/dev/mmcblk0p2 ota.slot=a\n")
    (root / "boot_id").write_text(str(uuid.uuid4()) + "\n")
    cfg = load_config_for_record(tmp)
    write_record(new_record(cfg, 1, version_number=running_version_number), str(root / "etc" / "full_ota_record.json"))
    (root / "etc" / "ota.pub.pem").write_bytes(Path(public_key).read_bytes())
    conf = {
        "device": device_id, "description": "simulated SAMA5D2", "server": server_url, "deviceToken": token,
        "deviceTypeId": device_type, "publicKeys": ["etc/ota.pub.pem"], "record": "etc/full_ota_record.json",
        "stateDir": "var/lib/ota-agent", "cmdline": "cmdline", "bootIdFile": "boot_id",
        "flask": {"host": "127.0.0.1", "port": 0}, "token": "local-secret",
        "installer": {"type": "ab", "slots": {"a": "slot-a.img", "b": "slot-b.img"},
                      "bootEnv": {"tool": "file", "file": str(root / "bootenv")}},
        "packages": [{"package": "Potenco-test", "BeforeUpdate": f"echo before > {root}/before.txt",
                      "AfterUpdate": f"echo after > {root}/after.txt"}],
    }
    conf["installer"]["slots"] = {k: str(root / v) for k, v in conf["installer"]["slots"].items()}
    conf.update(extra)
    path = root / "ota-agent.json"
    path.write_text(json.dumps(conf, indent=2))
    return path


def reboot(conf: Path) -> str:
    """A simulated reboot of the device: the boot script's model (bootsim) picks the slot and updates the
    saved environment; the kernel command line names the slot; a new boot id. Returns the slot."""
    root = conf.parent
    env_file = root / "bootenv"
    env = parse_env_text(env_file.read_bytes())
    slot, saved, _ = boot(env, ["a", "b"])
    if saved != env:
        env_file.write_text("".join(f"{k}={v}\n" for k, v in saved.items()))
    (root / "cmdline").write_text(f"console=ttyS0,115200 ota.slot={slot}\n")
    (root / "boot_id").write_text(str(uuid.uuid4()) + "\n")
    return slot


def bootenv(conf: Path) -> Dict[str, str]:
    """The simulated device's boot environment file as a dict."""
    return parse_env_text((conf.parent / "bootenv").read_bytes())


def load_config_for_record(tmp: Path):
    from .conftest import SEED_CONFIG

    p = tmp / "device-record-conf.json"
    p.write_text(SEED_CONFIG)
    return load_config(str(p), env={})


def slots(conf: Path) -> Dict[str, bytes]:
    root = conf.parent
    return {"a": (root / "slot-a.img").read_bytes(), "b": (root / "slot-b.img").read_bytes(),
            "boot": (root / "bootenv").read_bytes()}


# --------------------------------------------------------------------------- the journey on the real server

def publish_with_seed_tools(p: Partner, key: str, payload: Optional[bytes] = None, build: int = 2) -> Dict[str, Any]:
    """The seed's flow: --createOTARecord, package, --uploadOTAImage, --list; returns the image row.

    The payload is a sample rootfs tarball, or ``payload`` (e.g. a raw filesystem image)."""
    env = p.env
    run_cli("partner-ota-hub-uploader", "-c", str(p.conf), "-s", "-n", str(build), "-d", "--createOTARecord",
            cwd=p.dir, env=env, check=0)
    record = json.loads((p.dir / "full_ota_record.json").read_text())
    if payload is None:
        rootfs = make_sample_rootfs(str(p.dir / "rootfs.tar.gz"), {"etc/version": record["version"].encode()})
    else:
        rootfs = str(p.dir / f"payload-{build}.img")
        Path(rootfs).write_bytes(payload)
    run_cli("ota-build", "package", rootfs, "-r", str(p.dir / "full_ota_record.json"), "-k", key,
            "-o", str(p.dir / "hub_update.bin"), check=0)
    run_cli("partner-ota-hub-uploader", "-c", str(p.conf), "-s", "-n", str(build), "-d", "--uploadOTAImage",
            cwd=p.dir, env=env, check=0)
    listing = run_cli("partner-ota-hub-deploy", "-c", str(p.conf), "--list", cwd=p.dir, env=env, check=0).stdout
    row = next(line.split() for line in listing.splitlines() if record["version"] in line)
    return {"imageId": row[0], "record": record, "rootfs": rootfs}


def test_journey_deploy_install_report(server, partner, keys, tmp_path, caplog):
    key = keys["ed25519"]
    published = publish_with_seed_tools(partner, key["private"])
    token = partner.device("dev-1")
    conf = make_device(tmp_path, server.url, token, key["public"], device_type=partner.device_type)
    agent = Agent(load_agent_config(str(conf)))
    assert agent.check_once().state == "no-update"  # nothing deployed yet
    proc = run_cli("partner-ota-hub-deploy", "-c", str(partner.conf), "-d", "dev-1", "-i", published["imageId"],
                   cwd=partner.dir, env=partner.env, check=0)
    assert "Request accepted for processing" in proc.stdout
    before = slots(conf)
    caplog.set_level(logging.INFO)
    outcome = agent.check_once()
    assert outcome.state == "pending-reboot", outcome
    vn = int(published["record"]["versionNumber"])
    assert outcome.version_number == vn
    after = slots(conf)
    assert after["a"] == before["a"]                                   # active slot untouched
    assert after["b"] == Path(published["rootfs"]).read_bytes()        # image written to the inactive slot
    # boot slot switched (the contract's variables and the legacy one, one write)
    assert after["boot"] == b"ota_slot=b\nBOOT_ORDER=b a\nBOOT_b_LEFT=3\nupgrade_available=1\nbootcount=0\n"
    assert (conf.parent / "before.txt").exists() and (conf.parent / "after.txt").exists()
    hdr = conf.parent / "var/lib/ota-agent/ota_type_5.hdr"
    assert hdr.read_bytes()[0] == 5 and len(hdr.read_bytes()) == 216
    # The server shows the device's state.
    devices = requests.get(f"{server.url}/v1/ota/partners/{partner.partner_id}/devices",
                           headers={"Authorization": f"Bearer {partner.api_token()}"}, timeout=30).json()
    dev = next(d for d in devices if d["deviceId"] == "dev-1")
    assert dev["state"] == "pending-reboot" and str(dev["versionNumber"]) == published["record"]["versionNumber"]
    # Until the reboot nothing more happens (the same image is not installed twice).
    assert agent.check_once().state == "pending-reboot"
    assert slots(conf) == after
    # The reboot: the boot script tries slot b (one attempt used); the agent's health check passes
    # (it reached the server), it commits and reports installed.
    assert reboot(conf) == "b"
    assert bootenv(conf)["BOOT_b_LEFT"] == "2" and bootenv(conf)["bootcount"] == "1"
    outcome = agent.check_once()
    assert outcome.state == "installed" and outcome.version_number == vn, outcome
    env = bootenv(conf)
    assert env["upgrade_available"] == "0" and env["bootcount"] == "0" and env["BOOT_b_LEFT"] == "3"
    devices = requests.get(f"{server.url}/v1/ota/partners/{partner.partner_id}/devices",
                           headers={"Authorization": f"Bearer {partner.api_token()}"}, timeout=30).json()
    dev = next(d for d in devices if d["deviceId"] == "dev-1")
    assert dev["state"] == "installed" and str(dev["versionNumber"]) == published["record"]["versionNumber"]
    # A committed system boots without writing the environment; replay is refused.
    committed = slots(conf)
    assert reboot(conf) == "b" and slots(conf)["boot"] == committed["boot"]
    assert agent.check_once().state == "no-update"
    assert slots(conf)["b"] == committed["b"] and slots(conf)["a"] == committed["a"]


def test_device_token_cannot_deploy(server, partner, keys):
    token = partner.device("dev-x")
    resp = requests.put(f"{server.url}/v1/ota/partners/{partner.partner_id}/deviceTypes/{partner.device_type}"
                        f"/firmwareImages/1/push", json={"value": "dev-x"},
                        headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert resp.status_code in (401, 403)


# --------------------------------------------------------------------------- a hostile server

class Hostile:
    """A server that speaks the device API but serves whatever bytes it is given."""

    def __init__(self, image: bytes, version_number: int):
        self.image = image
        self.version_number = version_number
        self.reports: List[Dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                if "/update" in self.path:
                    body = json.dumps({"versionNumber": str(outer.version_number), "version": "evil", "imageId": "666",
                                       "size": len(outer.image), "sha256": hashlib.sha256(outer.image).hexdigest(),
                                       "url": "/v1/devices/dev-h/images/666"}).encode()
                else:
                    body = outer.image
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                outer.reports.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def signed(tmp: Path, key: str, version_number: int, ota_type: int = 5, payload: bytes = b"R" * 5000) -> bytes:
    src = tmp / f"payload-{version_number}-{ota_type}"
    src.write_bytes(payload)
    out = tmp / f"hub-{version_number}-{ota_type}.bin"
    package_image(str(src), str(out), make_signer(key), ota_type, version_number)
    return out.read_bytes()


def _tamper(data: bytes) -> bytes:
    b = bytearray(data)
    b[-100] ^= 0x01
    return bytes(b)


HOSTILE = {
    "tampered": (lambda t, k, o: _tamper(signed(t, k, 50)), 50, "corrupt"),
    "truncated": (lambda t, k, o: signed(t, k, 50)[:-1000], 50, "truncated"),
    "wrong-type": (lambda t, k, o: signed(t, k, 50, ota_type=3), 50, "wrong-type"),
    "wrongly-signed": (lambda t, k, o: signed(t, o, 50), 50, "unknown-key"),
    "forged-key-id": (lambda t, k, o: _forge(signed(t, o, 50), signed(t, k, 49)), 50, "bad-signature"),
    "older": (lambda t, k, o: signed(t, k, 5), 5, "downgrade"),
    "replay": (lambda t, k, o: signed(t, k, 10), 10, "downgrade"),
}


def _forge(theirs: bytes, ours: bytes) -> bytes:
    b = bytearray(theirs)
    b[64:96] = ours[64:96]  # claim our trusted key id
    return bytes(b)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_server_images_are_refused(case, keys, other_key, tmp_path, caplog):
    make, offered, reason = HOSTILE[case]
    image = make(tmp_path, keys["ed25519"]["private"], other_key["private"])
    hostile = Hostile(image, offered)
    try:
        conf = make_device(tmp_path, hostile.url, "t", keys["ed25519"]["public"], device_id="dev-h",
                           running_version_number=10)
        before = slots(conf)
        caplog.set_level(logging.INFO)
        outcome = Agent(load_agent_config(str(conf))).check_once()
        assert outcome.state == "rejected"
        assert outcome.message.startswith(reason), outcome.message
        assert outcome.exit_code >= 10
        after = slots(conf)
        assert after["a"] == before["a"] and after["boot"] == before["boot"]   # active slot and boot choice untouched
        if case != "tampered":  # refused from the header: nothing was written, no hook ran
            assert after == before
            assert not (conf.parent / "before.txt").exists()
        else:  # found after streaming: the inactive slot is marked bad, the boot choice untouched
            state = json.loads((conf.parent / "var/lib/ota-agent/state.json").read_text())
            assert state["badSlots"] == {"b": 50} and "pending" not in state
        assert "refused the image" in caplog.text and reason in caplog.text
        assert hostile.reports[-1]["state"] == "rejected"
        leftovers = sorted(p.name for p in (conf.parent / "var/lib/ota-agent").iterdir())
        assert "ota_type_5.img" not in leftovers and "hub_update.bin.part" not in leftovers
    finally:
        hostile.close()


def test_downgrade_allowed_only_when_configured(keys, tmp_path):
    hostile = Hostile(signed(tmp_path, keys["ed25519"]["private"], 5), 5)
    try:
        conf = make_device(tmp_path, hostile.url, "t", keys["ed25519"]["public"], device_id="dev-h",
                           running_version_number=10, allowDowngrade=True)
        assert Agent(load_agent_config(str(conf))).check_once().state == "pending-reboot"
    finally:
        hostile.close()


def test_ota_agent_cli_exit_code_on_refusal(keys, other_key, tmp_path):
    hostile = Hostile(signed(tmp_path, other_key["private"], 50), 50)
    try:
        conf = make_device(tmp_path, hostile.url, "t", keys["ed25519"]["public"], device_id="dev-h")
        proc = run_cli("ota-agent", "-c", str(conf), "once")
        assert proc.returncode == 13, proc.stderr
        assert "refused the image" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        hostile.close()


# --------------------------------------------------------------------------- config and local API

def test_agent_config_errors(tmp_path, keys):
    conf = make_device(tmp_path, "http://127.0.0.1:9", "t", keys["ed25519"]["public"])
    doc = json.loads(conf.read_text())
    doc["flask"]["host"] = "0.0.0.0"  # the seed's default: refused, the local API stays on loopback
    conf.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="field 'flask.host'"):
        load_agent_config(str(conf))
    del doc["flask"]
    doc.pop("installer")
    conf.write_text(json.dumps(doc))
    proc = run_cli("ota-agent", "-c", str(conf), "info")
    assert proc.returncode == 2 and "field 'installer': is missing" in proc.stderr


def test_local_api_needs_token(keys, tmp_path):
    hostile = Hostile(signed(tmp_path, keys["ed25519"]["private"], 50), 50)
    try:
        conf = make_device(tmp_path, hostile.url, "t", keys["ed25519"]["public"], device_id="dev-h")
        api = LocalApi(Agent(load_agent_config(str(conf))), "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{api.port}"
        try:
            assert requests.get(base + "/getInfo", timeout=10).status_code == 401
            assert requests.get(base + "/getInfo", headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401
            auth = {"Authorization": "Bearer local-secret"}
            info = requests.get(base + "/getInfo", headers=auth, timeout=10).json()
            assert info["status"] == 200 and info["info"]["device"] == "dev-h"
            assert info["info"]["versionNumber"] == "0"
            resp = requests.post(base + "/startUpdate", headers=auth, timeout=10)
            assert resp.status_code == 202
            api.worker.join(30)
            info = requests.get(base + "/getInfo", headers=auth, timeout=10).json()
            assert info["info"]["lastState"] == "pending-reboot" and info["info"]["versionNumber"] == "50"
        finally:
            api.shutdown()
    finally:
        hostile.close()


def test_device_id_and_token_from_provisioned_files(tmp_path, keys):
    conf = make_device(tmp_path, "http://127.0.0.1:9", "", keys["ed25519"]["public"])
    doc = json.loads(conf.read_text())
    del doc["device"], doc["deviceToken"]
    (conf.parent / "device-id").write_text("sama5-0042\n")
    (conf.parent / "device-token").write_text("tok-123\n")
    doc.update(deviceFile="device-id", deviceTokenFile="device-token")
    conf.write_text(json.dumps(doc))
    cfg = load_agent_config(str(conf), env={})
    assert cfg.device == "sama5-0042" and cfg.device_token == "tok-123"
    assert load_agent_config(str(conf), env={"OTA_DEVICE_ID": "env-dev"}).device == "env-dev"
    (conf.parent / "device-id").write_text("bad id/../x\n")
    with pytest.raises(ConfigError, match="field 'device'"):
        load_agent_config(str(conf), env={})
    del doc["deviceFile"]
    conf.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="field 'device': is missing"):
        load_agent_config(str(conf), env={})


def test_agent_config_command_for_images(tmp_path):
    """What meta-ota's ota-agent recipe writes to /etc/ota-agent.json, loaded back by the agent."""
    out = tmp_path / "ota-agent.json"
    run_cli("ota-build", "agent-config", "--server", "https://ota.example.com", "--device-type", "dt-1",
            "--public-key", "/etc/ota/ota-signing.pub.pem", "--slot", "a=/dev/mmcblk0p2", "--slot", "b=/dev/mmcblk0p3",
            "--boot-variable", "bootpart", "--boot-value", "a=0:2", "--boot-value", "b=0:3", "-o", str(out), check=0)
    doc = json.loads(out.read_text())
    assert doc["installer"] == {"type": "ab", "slots": {"a": "/dev/mmcblk0p2", "b": "/dev/mmcblk0p3"},
                                "bootEnv": {"tool": "fw_setenv", "variable": "bootpart", "values": {"a": "0:2", "b": "0:3"}}}
    (tmp_path / "device-id").write_text("dev-9\n")
    doc.update(deviceFile=str(tmp_path / "device-id"))
    out.write_text(json.dumps(doc))
    cfg = load_agent_config(str(out), env={"OTA_DEVICE_TOKEN": "t"})
    assert cfg.device == "dev-9" and cfg.public_keys == ["/etc/ota/ota-signing.pub.pem"]
    run_cli("ota-build", "agent-config", "--server", "http://10.0.0.1:8080", "--device-type", "dt",
            "--public-key", "/k.pem", "--command", "/sbin/sysupgrade {image}", "-o", str(out), check=0)
    assert json.loads(out.read_text())["installer"] == {"type": "command", "command": ["/sbin/sysupgrade", "{image}"]}
    # The seed's tar.gz payload with slots: the archive installer; boot limit and health check passed on.
    run_cli("ota-build", "agent-config", "--server", "https://ota.example.com", "--device-type", "dt-1",
            "--public-key", "/k.pem", "--slot", "a=/dev/mmcblk0p2", "--slot", "b=/dev/mmcblk0p3",
            "--payload-fstype", "tar.gz", "--boot-limit", "5", "--health-check", "/usr/bin/check-app --quick",
            "--reboot-command", "systemctl reboot", "-o", str(out), check=0)
    doc = json.loads(out.read_text())
    assert doc["installer"]["type"] == "archive" and doc["bootLimit"] == 5
    assert doc["healthCheck"] == ["/usr/bin/check-app", "--quick"] and doc["rebootCommand"] == ["systemctl", "reboot"]
    assert load_agent_config(str(out), env={"OTA_DEVICE_TOKEN": "t", "OTA_DEVICE_ID": "d"}).reboot_command == [
        "systemctl", "reboot"]
    proc = run_cli("ota-build", "agent-config", "--server", "http://x", "--device-type", "dt", "--public-key", "/k.pem",
                   "--command", "x", "--reboot-command", "reboot", "-o", str(out))
    assert proc.returncode == 2 and "only the A/B installers reboot" in proc.stderr
    # A/B: the device's identity and the state on the partition both slots mount
    run_cli("ota-build", "agent-config", "--server", "https://ota.example.com", "--device-type", "dt-1",
            "--public-key", "/k.pem", "--slot", "a=/dev/mmcblk0p2", "--slot", "b=/dev/mmcblk0p3",
            "--state-dir", "/data/ota-agent", "--device-dir", "/data/ota", "-o", str(out), check=0)
    doc = json.loads(out.read_text())
    assert (doc["stateDir"], doc["deviceFile"], doc["deviceTokenFile"]) == (
        "/data/ota-agent", "/data/ota/device-id", "/data/ota/device-token")
    before = out.read_bytes()
    proc = run_cli("ota-build", "agent-config", "--server", "http://x", "--device-type", "dt", "--public-key", "/k.pem",
                   "--command", "x", "--device-dir", "data/ota", "-o", str(out))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith(
        "--device-dir 'data/ota' must be an absolute path on the device") and out.read_bytes() == before
    assert doc["installer"]["bootEnv"]["tool"] == "fw_setenv"
    # The boot script's file mode (OTA_BOOT_ENV_STORAGE = "file"): the agent keeps the state in the same file.
    run_cli("ota-build", "agent-config", "--server", "https://ota.example.com", "--device-type", "dt-1",
            "--public-key", "/k.pem", "--slot", "a=/dev/mmcblk0p2", "--slot", "b=/dev/mmcblk0p3",
            "--boot-variable", "bootpart", "--boot-value", "a=0:2", "--boot-value", "b=0:3",
            "--boot-env-file", "/uboot/ota-env.txt", "-o", str(out), check=0)
    assert json.loads(out.read_text())["installer"]["bootEnv"] == {
        "tool": "file", "file": "/uboot/ota-env.txt", "variable": "bootpart", "values": {"a": "0:2", "b": "0:3"}}
    proc = run_cli("ota-build", "agent-config", "--server", "http://x", "--device-type", "dt", "--public-key", "/k.pem",
                   "--slot", "a=/dev/sda2", "--slot", "b=/dev/sda3", "--boot-env-file", "ota-env.txt", "-o", str(out))
    assert proc.returncode == 2 and "boot env file: 'ota-env.txt' must be an absolute path" in proc.stderr
    proc = run_cli("ota-build", "agent-config", "--server", "ftp://x", "--device-type", "dt", "--public-key", "/k.pem",
                   "--command", "x", "-o", str(out))
    assert proc.returncode == 2 and "field 'server'" in proc.stderr
    proc = run_cli("ota-build", "agent-config", "--server", "http://x", "--device-type", "dt", "--public-key", "/k.pem",
                   "--slot", "a=/dev/sda2", "-o", str(out))
    assert proc.returncode == 2 and "two slots" in proc.stderr


def test_agent_config_takes_the_device_type_from_the_config(tmp_path, seed_config):
    """meta-ota's ota-agent recipe passes -c OTA_CONFIG when OTA_AGENT_DEVICE_TYPE is empty."""
    out = tmp_path / "ota-agent.json"
    run_cli("ota-build", "agent-config", "--server", "http://10.0.0.1:8080", "-c", str(seed_config),
            "--public-key", "/k.pem", "--command", "/sbin/sysupgrade {image}", "-o", str(out), check=0)
    assert json.loads(out.read_text())["deviceTypeId"] == json.loads(seed_config.read_text())["deviceTypeId"]
    proc = run_cli("ota-build", "agent-config", "--server", "http://x", "--public-key", "/k.pem", "--command", "x",
                   "-o", str(out))
    assert proc.returncode == 2 and "--device-type" in proc.stderr and "\n" not in proc.stderr.strip()
