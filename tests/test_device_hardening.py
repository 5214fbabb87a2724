"""Issue 11, device half: what an attacker's server, a malformed offer or a bad configuration did to the agent.

Real loopback HTTP servers (``http.server`` in threads), real files, real keys and real processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from ota_build.core import header as hdr
from ota_build.core.errors import ConfigError
from ota_build.core.signing import make_signer
from ota_build.device.agent import Agent
from ota_build.device.config import load_agent_config
from ota_build.device.installers import ABInstaller, BootEnv, CommandInstaller, InstallError
from ota_build.device.localapi import LocalApi

from .conftest import assert_one_line_error, run_cli, script
from .test_device_agent import make_device, signed, slots

Reply = Tuple[int, Dict[str, str], bytes]


class Recorder:
    """A loopback HTTP server that records every request (path, headers) and answers with ``route(path)``."""

    def __init__(self, route: Optional[Callable[[str], Reply]] = None):
        self.route: Callable[[str], Reply] = route or (lambda path: (404, {}, b""))
        self.seen: List[Dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, body_in: bytes = b"") -> None:
                outer.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                   "body": body_in})
                status, headers, body = outer.route(self.path) if self.command == "GET" else (204, {}, b"")
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                self._answer()

            def do_POST(self) -> None:  # noqa: N802
                self._answer(self.rfile.read(int(self.headers.get("Content-Length", 0))))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def authorised(self) -> List[str]:
        """Paths of the requests that carried an Authorization header."""
        return [r["path"] for r in self.seen if any(k.lower() == "authorization" for k in r["headers"])]

    def gets(self, fragment: str) -> List[Dict[str, Any]]:
        """The GET requests whose path contains ``fragment``."""
        return [r for r in self.seen if r["method"] == "GET" and fragment in r["path"]]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    made: List[Recorder] = []

    def make(route: Optional[Callable[[str], Reply]] = None) -> Recorder:
        made.append(Recorder(route))
        return made[-1]

    yield make
    for srv in made:
        srv.close()


def offer_body(image: bytes, version_number: int, url: str, **changes: Any) -> bytes:
    doc: Dict[str, Any] = {"versionNumber": str(version_number), "version": "1.0.0", "imageId": "7", "size": len(image),
                           "sha256": hashlib.sha256(image).hexdigest(), "url": url}
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def device_server(image: bytes, version_number: int, url: str = "/v1/devices/dev-h/images/7",
                  redirect: Optional[str] = None) -> Callable[[str], Reply]:
    """The configured server: offers ``image`` at ``url``; its own image path answers the image (or ``redirect``)."""
    def route(path: str) -> Reply:
        if "/update" in path:
            return 200, {"Content-Type": "application/json"}, offer_body(image, version_number, url)
        if path.startswith("/v1/devices/dev-h/images/7"):
            if redirect:
                return 302, {"Location": redirect}, b""
            return 200, {}, image
        return 404, {}, b""
    return route


def image_server(image: bytes) -> Callable[[str], Reply]:
    return lambda path: (200, {}, image)


# --------------------------------------------------------------------------- 11: the token stays on the server's origin

def test_offer_url_on_another_host_is_refused_unless_configured(servers, keys, tmp_path, caplog):
    image = signed(tmp_path, keys["ed25519"]["private"], 50)
    other = servers(image_server(image))
    main = servers(device_server(image, 50, url=other.url + "/cdn/hub_update.bin"))
    conf = make_device(tmp_path, main.url, "SECRET-DEVICE-TOKEN", keys["ed25519"]["public"], device_id="dev-h")
    before = slots(conf)
    caplog.set_level(logging.INFO)
    outcome = Agent(load_agent_config(str(conf))).check_once()
    assert outcome.state == "rejected" and outcome.message.startswith("bad-origin"), outcome
    assert outcome.exit_code == 3
    assert other.seen == []                                    # never contacted, so never given the token
    assert slots(conf) == before
    assert "downloadOrigins" in caplog.text
    assert main.authorised() and all("/cdn/" not in p for p in main.authorised())


def test_configured_download_origin_gets_no_token(servers, keys, tmp_path):
    image = signed(tmp_path, keys["ed25519"]["private"], 50)
    other = servers(image_server(image))
    main = servers(device_server(image, 50, url=other.url + "/cdn/hub_update.bin"))
    conf = make_device(tmp_path, main.url, "SECRET-DEVICE-TOKEN", keys["ed25519"]["public"], device_id="dev-h",
                       downloadOrigins=[other.url])
    assert Agent(load_agent_config(str(conf))).check_once().state == "pending-reboot"
    assert other.gets("/cdn/hub_update.bin")                   # the image came from there ...
    assert other.authorised() == []                            # ... without the device token
    assert "/v1/devices/dev-h/update" in main.authorised()[0]  # the server still gets it


def test_redirect_to_another_origin_drops_the_token(servers, keys, tmp_path):
    image = signed(tmp_path, keys["ed25519"]["private"], 50)
    other = servers(image_server(image))
    main = servers(device_server(image, 50, redirect=other.url + "/cdn/hub_update.bin"))
    conf = make_device(tmp_path, main.url, "SECRET-DEVICE-TOKEN", keys["ed25519"]["public"], device_id="dev-h",
                       downloadOrigins=[other.url])
    assert Agent(load_agent_config(str(conf))).check_once().state == "pending-reboot"
    assert main.gets("/images/7") and "/v1/devices/dev-h/images/7" in main.authorised()  # first hop: the server
    assert other.gets("/cdn/") and other.authorised() == []                               # second hop: no token


def test_redirect_to_an_unconfigured_origin_is_refused(servers, keys, tmp_path):
    image = signed(tmp_path, keys["ed25519"]["private"], 50)
    other = servers(image_server(image))
    main = servers(device_server(image, 50, redirect=other.url + "/steal"))
    conf = make_device(tmp_path, main.url, "SECRET-DEVICE-TOKEN", keys["ed25519"]["public"], device_id="dev-h")
    before = slots(conf)
    t0 = time.monotonic()
    outcome = Agent(load_agent_config(str(conf))).check_once()
    assert outcome.state == "rejected" and "bad-origin" in outcome.message and "redirect (302)" in outcome.message
    assert other.seen == [] and slots(conf) == before
    assert time.monotonic() - t0 < 5                           # refused at once, not retried with back-off


def test_redirect_on_the_same_origin_keeps_the_token(servers, keys, tmp_path):
    image = signed(tmp_path, keys["ed25519"]["private"], 50)

    def route(path: str) -> Reply:
        if "/update" in path:
            return 200, {}, offer_body(image, 50, "/v1/devices/dev-h/images/7")
        if path == "/v1/devices/dev-h/images/7":
            return 307, {"Location": "/blobs/abc"}, b""
        return 200, {}, image

    main = servers(route)
    conf = make_device(tmp_path, main.url, "SECRET-DEVICE-TOKEN", keys["ed25519"]["public"], device_id="dev-h")
    assert Agent(load_agent_config(str(conf))).check_once().state == "pending-reboot"
    assert "/blobs/abc" in main.authorised()


def test_download_origins_config_is_checked(keys, tmp_path):
    conf = make_device(tmp_path, "http://127.0.0.1:9", "t", keys["ed25519"]["public"], downloadOrigins=["http://"])
    with pytest.raises(ConfigError, match="field 'downloadOrigins'"):
        load_agent_config(str(conf))


# --------------------------------------------------------------------------- 12: malformed offers

GOOD = {"versionNumber": "50", "size": 1000, "sha256": "ab" * 32, "url": "/v1/devices/dev-h/images/7"}
MALFORMED = {
    "empty-object": b"{}",
    "array": b"[]",
    "not-json": b"<html>oops</html>",
    "not-utf8": b"\xff\xfe{",
    "size-abc": json.dumps({**GOOD, "size": "abc"}).encode(),
    "size-negative": json.dumps({**GOOD, "size": -5}).encode(),
    "size-zero": json.dumps({**GOOD, "size": 0}).encode(),
    "size-bool": json.dumps({**GOOD, "size": True}).encode(),
    "size-float": json.dumps({**GOOD, "size": 1.5}).encode(),
    "version-abc": json.dumps({**GOOD, "versionNumber": "abc"}).encode(),
    "version-negative": json.dumps({**GOOD, "versionNumber": -1}).encode(),
    "version-huge": json.dumps({**GOOD, "versionNumber": str(2**64)}).encode(),
    "version-null": json.dumps({**GOOD, "versionNumber": None}).encode(),
    "missing-url": json.dumps({k: v for k, v in GOOD.items() if k != "url"}).encode(),
    "url-number": json.dumps({**GOOD, "url": 5}).encode(),
    "url-file": json.dumps({**GOOD, "url": "file:///etc/shadow"}).encode(),
    "url-protocol-relative": json.dumps({**GOOD, "url": "//evil.example/x"}).encode(),
    "url-newline": json.dumps({**GOOD, "url": "/x\r\nHost: evil"}).encode(),
    "sha-bad": json.dumps({**GOOD, "sha256": "xyz"}).encode(),
    "missing-sha": json.dumps({k: v for k, v in GOOD.items() if k != "sha256"}).encode(),
    "huge": b'{"pad": "' + b"x" * (1 << 20) + b'"}',
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_offer_is_refused_in_one_line(case, servers, keys, tmp_path, caplog):
    main = servers(lambda path: (200, {}, MALFORMED[case]) if "/update" in path else (404, {}, b""))
    conf = make_device(tmp_path, main.url, "t", keys["ed25519"]["public"], device_id="dev-h")
    before = slots(conf)
    caplog.set_level(logging.INFO)
    outcome = Agent(load_agent_config(str(conf))).check_once()
    assert outcome.state == "rejected" and outcome.message.startswith("bad-offer: malformed offer"), outcome
    assert outcome.exit_code == 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0].getMessage() and errors[0].exc_info is None
    assert slots(conf) == before
    assert [r["path"] for r in main.seen if r["method"] == "GET" and "/update" not in r["path"]] == []
    report = json.loads(main.seen[-1]["body"])
    assert report["state"] == "rejected"


def test_once_exits_nonzero_with_one_line_on_a_malformed_offer(servers, keys, tmp_path):
    main = servers(lambda path: (200, {}, json.dumps({**GOOD, "size": "abc"}).encode()))
    conf = make_device(tmp_path, main.url, "t", keys["ed25519"]["public"], device_id="dev-h")
    proc = run_cli("ota-agent", "-c", str(conf), "once")
    assert_one_line_error(proc, 3, "field 'size'")


def test_run_keeps_running_after_malformed_offers(servers, keys, tmp_path):
    answers = [b"{}", b"[]", b"not json", json.dumps({**GOOD, "versionNumber": "abc"}).encode()]
    main = servers(lambda path: (200, {}, answers[len(main.gets("/update")) % len(answers)]))
    conf = make_device(tmp_path, main.url, "t", keys["ed25519"]["public"], device_id="dev-h", pollInterval=1)
    proc = subprocess.Popen(script("ota-agent") + ["-c", str(conf), "run"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(main.gets("/update")) < 5 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        assert len(main.gets("/update")) >= 5
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and err.count("malformed offer") >= 4


# --------------------------------------------------------------------------- 13: offer and header agree

def test_header_version_number_must_match_the_offer(servers, keys, tmp_path, caplog):
    image = signed(tmp_path, keys["ed25519"]["private"], 7)
    main = servers(device_server(image, 100))
    conf = make_device(tmp_path, main.url, "t", keys["ed25519"]["public"], device_id="dev-h")
    before = slots(conf)
    caplog.set_level(logging.INFO)
    outcome = Agent(load_agent_config(str(conf))).check_once()
    assert outcome.state == "rejected" and outcome.message.startswith("version-mismatch"), outcome
    assert outcome.exit_code == 10
    assert slots(conf) == before and not (conf.parent / "before.txt").exists()
    assert "says versionNumber 7, but it was offered as 100" in caplog.text


def test_offer_size_must_match_the_download(servers, keys, tmp_path):
    image = signed(tmp_path, keys["ed25519"]["private"], 50)

    def route(path: str) -> Reply:
        if "/update" in path:
            return 200, {}, offer_body(image, 50, "/v1/devices/dev-h/images/7", size=len(image) - 10)
        return 200, {}, image

    main = servers(route)
    conf = make_device(tmp_path, main.url, "t", keys["ed25519"]["public"], device_id="dev-h")
    before = slots(conf)
    outcome = Agent(load_agent_config(str(conf))).check_once()
    assert outcome.state in ("failed", "rejected") and outcome.exit_code != 0
    assert slots(conf) == before


# --------------------------------------------------------------------------- 14: empty and oversized payloads

def empty_payload_image(key: str, version_number: int) -> bytes:
    """A correctly signed hub_update.bin with a 0-byte payload, as ota-build packaged /dev/null before."""
    signer = make_signer(key)
    length = hdr.header_length_for(0, signer.max_signature_length)
    unsigned = hdr.Header(ota_type=5, version_number=version_number, payload_length=0,
                          payload_sha256=hashlib.sha256(b"").digest(), sig_alg=signer.algorithm, key_id=signer.key_id,
                          header_length=length)
    return hdr.pack(hdr.Header(**{**unsigned.__dict__, "signature": signer.sign(unsigned.signed_bytes())}))


def test_package_refuses_an_empty_image(keys, tmp_path):
    out = tmp_path / "hub_update.bin"
    proc = run_cli("ota-build", "package", "/dev/null", "-k", keys["ed25519"]["private"], "-o", str(out),
                   "--version-number", "30")
    assert_one_line_error(proc, 2, "/dev/null", "empty")
    assert not out.exists() and not list(tmp_path.glob(".hub_update.bin.*"))
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    proc = run_cli("ota-build", "package", str(empty), "-k", keys["ed25519"]["private"], "-o", str(out),
                   "--version-number", "30")
    assert_one_line_error(proc, 2, "empty")


def test_agent_refuses_an_empty_payload(servers, keys, tmp_path):
    image = empty_payload_image(keys["ed25519"]["private"], 30)
    main = servers(device_server(image, 30))
    conf = make_device(tmp_path, main.url, "t", keys["ed25519"]["public"], device_id="dev-h")
    before = slots(conf)
    outcome = Agent(load_agent_config(str(conf))).check_once()
    assert outcome.state == "rejected" and outcome.message.startswith("empty-payload"), outcome
    assert slots(conf) == before and "ota_slot=a" in slots(conf)["boot"].decode()
    assert not (conf.parent / "var/lib/ota-agent/ota_type_5.img").exists()


def test_installers_refuse_empty_and_oversized_payloads(tmp_path):
    a, b = tmp_path / "slot-a.img", tmp_path / "slot-b.img"
    a.write_bytes(b"A" * 4096)
    b.write_bytes(b"B" * 4096)                      # a file-backed slot of 4 KiB
    env = tmp_path / "bootenv"
    env.write_text("ota_slot=a\n")
    inst = ABInstaller({"a": str(a), "b": str(b)}, BootEnv({"tool": "file", "file": str(env)}))
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    with pytest.raises(InstallError, match="empty"):
        inst.install(str(empty), hashlib.sha256(b"").digest())
    big = tmp_path / "big.img"
    big.write_bytes(os.urandom(4097))
    with pytest.raises(InstallError, match="does not fit slot b .*4096 bytes"):
        inst.install(str(big), hashlib.sha256(big.read_bytes()).digest())
    assert b.read_bytes() == b"B" * 4096 and env.read_text() == "ota_slot=a\n"
    fits = tmp_path / "fits.img"
    fits.write_bytes(os.urandom(4000))
    inst.install(str(fits), hashlib.sha256(fits.read_bytes()).digest())
    assert b.read_bytes()[:4000] == fits.read_bytes() and len(b.read_bytes()) == 4096  # written in place
    assert env.read_text().startswith("ota_slot=b\nBOOT_ORDER=b a\n")
    with pytest.raises(InstallError, match="empty"):
        CommandInstaller(["/bin/true"]).install(str(empty), hashlib.sha256(b"").digest())


# --------------------------------------------------------------------------- 15: the local API's host

def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_local_api_on_ipv6_loopback(keys, tmp_path):
    conf = make_device(tmp_path, "http://127.0.0.1:9", "t", keys["ed25519"]["public"], device_id="dev-h",
                       flask={"host": "::1", "port": 0})
    cfg = load_agent_config(str(conf))
    api = LocalApi(Agent(cfg), cfg.local_host, cfg.local_port).start()
    try:
        req = urllib.request.Request(f"http://[::1]:{api.port}/getInfo", headers={"Authorization": "Bearer local-secret"})
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            assert json.loads(resp.read())["info"]["device"] == "dev-h"
    finally:
        api.shutdown()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_local_api_unusable_host_is_one_line(host, keys, tmp_path):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if family == socket.AF_INET6 and not _ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    with socket.socket(family) as busy:
        busy.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        conf = make_device(tmp_path, "http://127.0.0.1:9", "t", keys["ed25519"]["public"], device_id="dev-h",
                           flask={"host": host, "port": port})
        if host == "localhost":
            with pytest.raises(ConfigError, match="cannot listen"):
                cfg = load_agent_config(str(conf))
                LocalApi(Agent(cfg), cfg.local_host, cfg.local_port)
            return
        proc = run_cli("ota-agent", "-c", str(conf), "run")
        assert_one_line_error(proc, 2, "cannot listen", repr(host))
