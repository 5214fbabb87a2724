"""Issue 12, device half: streaming A/B install, power loss, commit and rollback, against the real server.

The image goes from a real ``ota-build serve`` to the agent over loopback HTTP; where the network must fail,
a small loopback proxy in between cuts the connection (or flips a byte). Reboots are simulated with the
boot script's model (``ota_build.device.bootsim``); a power loss is a SIGKILL of a real ``ota-agent``
process at a fault point (``OTA_AGENT_FAULT``).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List

import pytest
import requests

from ota_build.device.agent import Agent
from ota_build.device.bootsim import boot
from ota_build.device.config import load_agent_config

from .conftest import run_cli
from .test_device_agent import bootenv, make_device, publish_with_seed_tools, reboot, slots

PAYLOAD_SIZE = 3 << 20


class Proxy:
    """A loopback proxy to the real server that can cut image downloads short, refuse them, or flip a byte."""

    def __init__(self, upstream: str):
        parts = urllib.parse.urlsplit(upstream)
        self.host, self.port = parts.hostname, parts.port
        self.cut_at = -1          # cut the next image body after this many bytes (then -1 again)
        self.refuse = False       # answer image requests with 503
        self.refuse_after_cut = False  # after a cut, refuse every image request (the server went away)
        self.flip_at = -1         # XOR one byte at this file offset
        self.ranges: List[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                image = "/images/" in self.path and self.command == "GET"
                if image:
                    outer.ranges.append(self.headers.get("Range", ""))
                    if outer.refuse:
                        self.send_response(503)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                conn = http.client.HTTPConnection(outer.host, outer.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if image and outer.flip_at >= 0:
                    start = int((self.headers.get("Range") or "bytes=0-")[6:].split("-")[0])
                    if start <= outer.flip_at < start + len(data):
                        buf = bytearray(data)
                        buf[outer.flip_at - start] ^= 0x40
                        data = bytes(buf)
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "date", "server"):
                        self.send_header(key, value)
                self.end_headers()
                if image and outer.cut_at >= 0:
                    self.wfile.write(data[:outer.cut_at])
                    self.wfile.flush()
                    outer.cut_at = -1
                    outer.refuse = outer.refuse_after_cut
                    self.close_connection = True
                    return
                self.wfile.write(data)

            do_GET = do_POST = _forward  # noqa: N815

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def proxy(server):
    p = Proxy(server.url)
    yield p
    p.close()


def deploy(partner, device: str, image_id: str) -> None:
    run_cli("partner-ota-hub-deploy", "-c", str(partner.conf), "-d", device, "-i", image_id, cwd=partner.dir,
            env=partner.env, check=0)


def device_state(server, partner, device: str) -> Dict[str, Any]:
    devices = requests.get(f"{server.url}/v1/ota/partners/{partner.partner_id}/devices",
                           headers={"Authorization": f"Bearer {partner.api_token()}"}, timeout=30).json()
    return next(d for d in devices if d["deviceId"] == device)


def raw_image(tag: bytes, size: int = PAYLOAD_SIZE) -> bytes:
    """A 'filesystem image' of ``size`` bytes (random, so a wrong byte anywhere is caught)."""
    return tag + os.urandom(size - len(tag))


def agent_for(conf: Path) -> Agent:
    agent = Agent(load_agent_config(str(conf)))
    agent.api.backoff = 0.01
    return agent


def state_of(conf: Path) -> Dict[str, Any]:
    return json.loads((conf.parent / "var/lib/ota-agent/state.json").read_text())


# --------------------------------------------------------------------------- network failures

def test_cut_connection_resumes_with_range(server, partner, proxy, keys, tmp_path, caplog):
    key = keys["ed25519"]
    payload = raw_image(b"NEW-ROOTFS")
    published = publish_with_seed_tools(partner, key["private"], payload)
    conf = make_device(tmp_path, proxy.url, partner.device("dev-c"), key["public"], device_id="dev-c",
                       device_type=partner.device_type)
    deploy(partner, "dev-c", published["imageId"])
    before = slots(conf)
    proxy.cut_at = 216 + PAYLOAD_SIZE // 2 + 12345   # mid-payload
    caplog.set_level(logging.INFO)
    outcome = agent_for(conf).check_once()
    assert outcome.state == "pending-reboot", outcome
    assert proxy.ranges == ["", f"bytes={216 + PAYLOAD_SIZE // 2 + 12345}-"]
    assert f"resuming download at byte {216 + PAYLOAD_SIZE // 2 + 12345}" in caplog.text
    after = slots(conf)
    assert after["b"] == payload and after["a"] == before["a"]
    assert bootenv(conf)["BOOT_ORDER"] == "b a"
    # The state directory holds the 216-byte header and a small state file: never the image.
    files = {p.name: p.stat().st_size for p in (conf.parent / "var/lib/ota-agent").iterdir()}
    assert set(files) == {"ota_type_5.hdr", "state.json"} and files["ota_type_5.hdr"] == 216
    assert files["state.json"] < 4096


def test_download_that_gives_up_never_switches_and_resumes_next_time(server, partner, proxy, keys, tmp_path, caplog):
    key = keys["ed25519"]
    payload = raw_image(b"NEW-ROOTFS")
    published = publish_with_seed_tools(partner, key["private"], payload)
    conf = make_device(tmp_path, proxy.url, partner.device("dev-g"), key["public"], device_id="dev-g",
                       device_type=partner.device_type)
    deploy(partner, "dev-g", published["imageId"])
    env_before = slots(conf)["boot"]
    cut = 216 + 1_000_000
    proxy.cut_at, proxy.refuse_after_cut = cut, True   # cut once, then the server is gone
    agent = agent_for(conf)
    agent.api.retries = 2
    outcome = agent.check_once()
    assert outcome.state == "failed" and "download" in outcome.message, outcome
    assert slots(conf)["boot"] == env_before                       # a partial slot is never switched to
    assert state_of(conf)["install"]["done"] == cut - 216          # what the slot holds is remembered
    assert device_state(server, partner, "dev-g")["state"] == "failed"
    # The network is back; a new agent process resumes from what the slot holds (hashed again).
    proxy.refuse = proxy.refuse_after_cut = False
    proxy.ranges.clear()
    caplog.set_level(logging.INFO)
    outcome = agent_for(conf).check_once()
    assert outcome.state == "pending-reboot", outcome
    assert proxy.ranges == [f"bytes={cut}-"]
    assert f"slot b holds {cut - 216} of {PAYLOAD_SIZE} bytes already" in caplog.text
    assert slots(conf)["b"] == payload and bootenv(conf)["BOOT_ORDER"] == "b a"


def test_payload_hash_mismatch_marks_slot_bad_and_keeps_boot(server, partner, proxy, keys, tmp_path):
    key = keys["ed25519"]
    published = publish_with_seed_tools(partner, key["private"], raw_image(b"NEW"))
    conf = make_device(tmp_path, proxy.url, partner.device("dev-m"), key["public"], device_id="dev-m",
                       device_type=partner.device_type)
    deploy(partner, "dev-m", published["imageId"])
    before = slots(conf)
    proxy.flip_at = 216 + PAYLOAD_SIZE - 7   # one byte near the end: found only after streaming
    outcome = agent_for(conf).check_once()
    assert outcome.state == "rejected" and outcome.message.startswith("corrupt"), outcome
    assert outcome.exit_code == 10
    after = slots(conf)
    assert after["boot"] == before["boot"] and after["a"] == before["a"]
    assert state_of(conf)["badSlots"] == {"b": int(published["record"]["versionNumber"])}
    assert "pending" not in state_of(conf) and "install" not in state_of(conf)
    assert device_state(server, partner, "dev-m")["state"] == "rejected"
    # A good download later clears the mark and switches.
    proxy.flip_at = -1
    assert agent_for(conf).check_once().state == "pending-reboot"
    assert "b" not in state_of(conf)["badSlots"]


# --------------------------------------------------------------------------- power loss (SIGKILL)

def agent_once(conf: Path, fault: str = "") -> Any:
    env = {"OTA_AGENT_FAULT": fault} if fault else {"OTA_AGENT_FAULT": ""}
    return run_cli("ota-agent", "-c", str(conf), "once", env=env)


def test_power_loss_between_write_and_switch(server, partner, keys, tmp_path):
    key = keys["ed25519"]
    payload = raw_image(b"NEW")
    published = publish_with_seed_tools(partner, key["private"], payload)
    conf = make_device(tmp_path, server.url, partner.device("dev-p1"), key["public"], device_id="dev-p1",
                       device_type=partner.device_type)
    deploy(partner, "dev-p1", published["imageId"])
    env_before = slots(conf)["boot"]
    proc = agent_once(conf, "after-write")
    assert proc.returncode == -9, proc.stderr
    assert slots(conf)["b"] == payload and slots(conf)["boot"] == env_before   # written, not switched
    proc = agent_once(conf)
    assert proc.returncode == 0 and proc.stdout.startswith("pending-reboot"), proc.stdout + proc.stderr
    assert "slot b holds" in proc.stderr                        # resumed from the slot, hashed again
    assert slots(conf)["b"] == payload and bootenv(conf)["BOOT_ORDER"] == "b a"
    assert device_state(server, partner, "dev-p1")["state"] == "pending-reboot"


def test_power_loss_between_switch_and_commit(server, partner, keys, tmp_path):
    key = keys["ed25519"]
    payload = raw_image(b"NEW")
    published = publish_with_seed_tools(partner, key["private"], payload)
    vn = int(published["record"]["versionNumber"])
    conf = make_device(tmp_path, server.url, partner.device("dev-p2"), key["public"], device_id="dev-p2",
                       device_type=partner.device_type)
    deploy(partner, "dev-p2", published["imageId"])
    # Killed right after the boot environment was switched, before the agent recorded it.
    assert agent_once(conf, "after-switch").returncode == -9
    assert bootenv(conf)["upgrade_available"] == "1" and state_of(conf)["pending"]["switched"] is False
    proc = agent_once(conf)                                 # same boot: consistent, nothing downloaded again
    assert proc.stdout.startswith("pending-reboot"), proc.stdout + proc.stderr
    assert state_of(conf)["pending"]["switched"] is True and bootenv(conf)["BOOT_ORDER"] == "b a"
    # The reboot into b; killed after the commit was written, before it was reported.
    assert reboot(conf) == "b"
    assert agent_once(conf, "after-commit").returncode == -9
    assert bootenv(conf)["upgrade_available"] == "0"
    assert device_state(server, partner, "dev-p2")["state"] == "committing"
    proc = agent_once(conf)
    assert proc.returncode == 0 and proc.stdout.startswith(f"installed: versionNumber {vn}"), proc.stdout + proc.stderr
    assert device_state(server, partner, "dev-p2")["state"] == "installed"
    assert "pending" not in state_of(conf) and state_of(conf)["installedVersionNumber"] == vn


# --------------------------------------------------------------------------- rollback

def test_broken_image_rolls_back_and_is_not_retried(server, partner, keys, tmp_path, caplog):
    key = keys["ed25519"]
    published = publish_with_seed_tools(partner, key["private"], raw_image(b"BROKEN"))
    vn = int(published["record"]["versionNumber"])
    conf = make_device(tmp_path, server.url, partner.device("dev-rb"), key["public"], device_id="dev-rb",
                       device_type=partner.device_type, healthCheck=["sh", "-c", "echo 'app did not start' >&2; exit 1"])
    deploy(partner, "dev-rb", published["imageId"])
    agent = agent_for(conf)
    assert agent.check_once().state == "pending-reboot"
    for attempt in range(3):                                  # bootLimit 3: three boots of b, none commits
        assert reboot(conf) == "b"
        outcome = agent.check_once()
        assert outcome.state == "failed" and "app did not start" in outcome.message, outcome
        assert bootenv(conf)["BOOT_b_LEFT"] == str(2 - attempt)
    assert device_state(server, partner, "dev-rb")["state"] == "failed"
    assert reboot(conf) == "a"                                # the boot script falls back
    env = bootenv(conf)
    # the script saves the boot variable with the state: the legacy variable names a again (as in U-Boot)
    assert env["BOOT_ORDER"] == "a b" and env["upgrade_available"] == "0" and env["ota_slot"] == "a"
    caplog.set_level(logging.INFO)
    outcome = agent.check_once()
    assert outcome.state == "rolled-back" and outcome.version_number == vn, outcome
    dev = device_state(server, partner, "dev-rb")
    assert dev["state"] == "rolled-back" and str(dev["versionNumber"]) == str(vn)
    assert state_of(conf)["failedVersionNumbers"] == [vn]
    # Still offered by the server, never installed again; logged once.
    before = slots(conf)
    assert agent.check_once().state == "no-update"
    assert agent.check_once().state == "no-update"
    assert slots(conf) == before
    assert caplog.text.count(f"versionNumber {vn} rolled back on this device before") == 1


def test_reboot_command_runs_after_the_switch_and_after_each_failed_health_check(server, partner, keys, tmp_path,
                                                                                     caplog):
    """rebootCommand: the agent reboots into the new slot itself, and after each failed health check, so a
    broken image is rolled back by the boot script with nobody at the device: bootLimit reboots, no more."""
    key = keys["ed25519"]
    published = publish_with_seed_tools(partner, key["private"], raw_image(b"REBOOTS"))
    vn = int(published["record"]["versionNumber"])
    marker = tmp_path / "reboots"
    conf = make_device(tmp_path, server.url, partner.device("dev-rc"), key["public"], device_id="dev-rc",
                       device_type=partner.device_type, healthCheck=["sh", "-c", "echo 'app did not start' >&2; exit 1"],
                       rebootCommand=["sh", "-c", f"echo \"$(cat {tmp_path}/dev-rc/boot_id)\" >> {marker}"])
    deploy(partner, "dev-rc", published["imageId"])
    agent = agent_for(conf)

    def reboots() -> List[str]:
        return marker.read_text().splitlines() if marker.exists() else []

    assert agent.check_once().state == "pending-reboot"
    assert len(reboots()) == 1                                # reported first, then rebooted
    assert device_state(server, partner, "dev-rc")["state"] == "pending-reboot"
    for attempt in range(3):                                  # bootLimit 3
        assert reboot(conf) == "b"
        assert agent.check_once().state == "failed"
        assert len(reboots()) == 2 + attempt, reboots()
        assert len(set(reboots())) == len(reboots())          # one reboot per boot
    assert reboot(conf) == "a"                                # the boot script falls back
    outcome = agent.check_once()
    assert outcome.state == "rolled-back" and outcome.version_number == vn, outcome
    assert agent.check_once().state == "no-update"
    assert len(reboots()) == 4                                # nothing after the rollback


def test_a_failing_reboot_command_is_one_line_and_retried_on_the_next_check(server, partner, keys, tmp_path, caplog):
    key = keys["ed25519"]
    published = publish_with_seed_tools(partner, key["private"], raw_image(b"NOREBOOT"))
    conf = make_device(tmp_path, server.url, partner.device("dev-rf"), key["public"], device_id="dev-rf",
                       device_type=partner.device_type,
                       rebootCommand=["sh", "-c", f"echo x >> {tmp_path}/tries; echo 'reboot: not permitted' >&2; exit 1"])
    deploy(partner, "dev-rf", published["imageId"])
    agent = agent_for(conf)
    caplog.set_level(logging.INFO)
    assert agent.check_once().state == "pending-reboot"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["rebootCommand exited 1 (reboot: not permitted): the device must be rebooted to go on"], errors
    assert agent.check_once().state == "pending-reboot"       # same boot: still pending, tried again
    assert (tmp_path / "tries").read_text().count("x") == 2
    assert reboot(conf) == "b" and agent.check_once().state == "installed"
    assert (tmp_path / "tries").read_text().count("x") == 2   # no reboot after a commit


def new_slot_boots_with_its_own_state(conf: Path, record: Dict[str, Any]) -> None:
    """On a device each slot is a rootfs of its own: the new slot comes up with the new image's record in
    /etc and an empty state directory (the state.json of the agent that installed it is in the old slot)."""
    state = conf.parent / "var/lib/ota-agent/state.json"
    (conf.parent / "old-slot-state.json").write_bytes(state.read_bytes())
    state.unlink()
    installed = conf.parent / "etc/full_ota_record.json"
    (conf.parent / "old-slot-record.json").write_bytes(installed.read_bytes())
    installed.write_text(json.dumps(record))


def updated_into_a_slot_with_its_own_state(server, partner, keys, tmp_path, device: str, tag: bytes):
    """An A/B install on a simulated device, the reboot into b, and b's own empty state (the caller's
    device config path and the image's versionNumber)."""
    key = keys["ed25519"]
    published = publish_with_seed_tools(partner, key["private"], raw_image(tag))
    conf = make_device(tmp_path, server.url, partner.device(device), key["public"], device_id=device,
                       device_type=partner.device_type)
    deploy(partner, device, published["imageId"])
    assert agent_for(conf).check_once().state == "pending-reboot"
    assert reboot(conf) == "b"
    new_slot_boots_with_its_own_state(conf, published["record"])
    return conf, int(published["record"]["versionNumber"])


def test_new_slot_with_a_state_directory_of_its_own_commits_from_the_boot_environment(server, partner, keys,
                                                                                         tmp_path, caplog):
    """The state directory is in each slot (/var/lib/ota-agent of each rootfs): the agent in the new slot
    has no record of the install, and the shared boot environment says it runs the uncommitted new slot."""
    conf, vn = updated_into_a_slot_with_its_own_state(server, partner, keys, tmp_path, "dev-os", b"OWNSTATE")
    caplog.set_level(logging.INFO)
    outcome = agent_for(conf).check_once()
    assert outcome.state == "installed" and outcome.version_number == vn, outcome
    assert "installed by the agent of the other slot" in caplog.text
    env = bootenv(conf)
    assert env["upgrade_available"] == "0" and env["BOOT_ORDER"].split()[0] == "b"
    assert device_state(server, partner, "dev-os")["state"] == "installed"
    assert agent_for(conf).check_once().state == "no-update"
    assert reboot(conf) == "b"                                # committed: it stays


def test_new_slot_with_its_own_state_that_fails_its_health_check_rolls_back(server, partner, keys, tmp_path):
    conf, vn = updated_into_a_slot_with_its_own_state(server, partner, keys, tmp_path, "dev-ob", b"OWNBROKEN")
    broken = json.loads(conf.read_text())
    broken["healthCheck"] = ["sh", "-c", "echo 'app did not start' >&2; exit 1"]
    conf.write_text(json.dumps(broken))                     # the new image's agent configuration
    for _ in range(3):
        assert agent_for(conf).check_once().state == "failed"
        slot = reboot(conf)
    assert slot == "a"                                        # the boot script fell back
    conf_a = json.loads(conf.read_text())
    conf_a.pop("healthCheck")
    conf.write_text(json.dumps(conf_a))                     # slot a: its own configuration, record and state
    (conf.parent / "var/lib/ota-agent/state.json").write_bytes((conf.parent / "old-slot-state.json").read_bytes())
    (conf.parent / "etc/full_ota_record.json").write_bytes((conf.parent / "old-slot-record.json").read_bytes())
    outcome = agent_for(conf).check_once()
    assert outcome.state == "rolled-back" and outcome.version_number == vn, outcome
    assert device_state(server, partner, "dev-ob")["state"] == "rolled-back"


def test_bootsim_follows_the_contract():
    env = {"BOOT_ORDER": "b a", "BOOT_b_LEFT": "2", "upgrade_available": "1", "bootcount": "0", "bootargs": "quiet"}
    slot, saved, volatile = boot(env, ["a", "b"], "bootpart", {"a": "0:2", "b": "0:3"})
    assert slot == "b" and saved["BOOT_b_LEFT"] == "1" and saved["bootcount"] == "1"
    assert volatile == {"bootpart": "0:3", "bootargs": "quiet ota.slot=b"}
    slot, saved, _ = boot(dict(saved, BOOT_b_LEFT="0"), ["a", "b"])
    assert slot == "a" and saved["BOOT_ORDER"] == "a b" and saved["upgrade_available"] == "0"
    committed = {"BOOT_ORDER": "b a", "upgrade_available": "0"}
    assert boot(committed, ["a", "b"])[:2] == ("b", committed)     # no write on a committed boot
    assert boot({}, ["a", "b"])[0] == "a"                          # unset BOOT_ORDER: the configured order


# --------------------------------------------------------------------------- memory and disk

def test_state_dir_stays_small_while_streaming(server, partner, keys, tmp_path):
    key = keys["ed25519"]
    size = 24 << 20
    payload = raw_image(b"BIG", size)
    published = publish_with_seed_tools(partner, key["private"], payload)
    conf = make_device(tmp_path, server.url, partner.device("dev-d"), key["public"], device_id="dev-d",
                       device_type=partner.device_type)
    deploy(partner, "dev-d", published["imageId"])
    state_dir = conf.parent / "var/lib/ota-agent"
    peak = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                used = sum(os.lstat(p).st_blocks * 512 for p in state_dir.iterdir()) if state_dir.exists() else 0
            except FileNotFoundError:
                continue
            peak[0] = max(peak[0], used)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert agent_for(conf).check_once().state == "pending-reboot"
    finally:
        stop.set()
        watcher.join()
    assert 0 < peak[0] < 1 << 20, peak
    assert hashlib.sha256(slots(conf)["b"]).digest() == hashlib.sha256(payload).digest()
