"""Seed 002 end to end over real sockets: POST /publish and PUT /notify on ``ota-build serve``, its CoAP server
(real UDP on 127.0.0.1) read by libcoap's ``coap-client`` and by ``aiocoap-client``, a CoAP device that is notified,
and the original's bugs (slot1 = slot0, ``..``/``.`` ids, one missing part reported, 500 on missing fields)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import requests

from .conftest import assert_one_line_error, run_cli
from .serverutil import Server, free_udp_port, start_server, stop_server

COAP_CLIENT = next((shutil.which(n) for n in ("coap-client", "coap-client-notls", "coap-client-openssl")
                    if shutil.which(n)), None)
AIOCOAP_CLIENT = str(Path(sys.executable).with_name("aiocoap-client"))
SLOT_BYTES = 2 * 1024 * 1024


class Site:
    """A server with its CoAP port and a partner token."""

    def __init__(self, srv: Server, coap_port: int, token: str, other_token: str):
        self.srv, self.coap_port, self.token, self.other_token = srv, coap_port, token, other_token

    def post(self, path: str, token: str = "", **kw: Any) -> requests.Response:
        return requests.post(self.srv.url + path, auth=("token", token or self.token), timeout=60, **kw)

    def put(self, path: str, token: str = "", **kw: Any) -> requests.Response:
        return requests.put(self.srv.url + path, auth=("token", token or self.token), timeout=60, **kw)

    def coap(self, path: str) -> str:
        return f"coap://127.0.0.1:{self.coap_port}/{path}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("coap")
    port = free_udp_port()
    srv = start_server(base / "data", None, extra=["--coap-port", str(port), "--coap-host", "127.0.0.1",
                                                   "--coap-notify-allow", "127.0.0.0/8"])
    try:
        tokens = []
        for _ in range(2):
            pid = "p-" + uuid.uuid4().hex[:10]
            srv.admin("partner", "--username", f"{pid}@example.com", "--partner-id", pid)
            tokens.append(srv.admin("api-token", "--partner", pid)["token"])
        yield Site(srv, port, tokens[0], tokens[1])
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def published(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, bytes]:
    files = {"manifest": os.urandom(300), "slot0": os.urandom(SLOT_BYTES), "slot1": os.urandom(SLOT_BYTES)}
    resp = site.post("/publish", data={"publish_id": "version_1"},
                     files={k: (k + ".bin", v) for k, v in files.items()})
    assert resp.status_code == 200, resp.text
    assert resp.json()["sizes"] == {k: len(v) for k, v in files.items()}
    return files


@pytest.mark.skipif(COAP_CLIENT is None, reason="libcoap's coap-client is not installed (apt-get install libcoap3-bin)")
@pytest.mark.parametrize("part", ["slot0", "slot1", "manifest"])
def test_libcoap_client_downloads_byte_exact(site: Site, published: Dict[str, bytes], tmp_path: Path, part: str) -> None:
    out = tmp_path / part
    proc = subprocess.run([str(COAP_CLIENT), "-m", "get", "-o", str(out), site.coap(f"version_1/{part}")],
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == published[part]  # slot1 is slot1, not a copy of slot0


def test_aiocoap_client_downloads_byte_exact(site: Site, published: Dict[str, bytes]) -> None:
    for part in ("slot1", "slot0"):
        proc = subprocess.run([AIOCOAP_CLIENT, site.coap(f"version_1/{part}")], capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == published[part]


def test_missing_resource_is_404_with_message(site: Site, published: Dict[str, bytes]) -> None:
    proc = subprocess.run([AIOCOAP_CLIENT, "-v", site.coap("version_1/slot7")], capture_output=True, timeout=60)
    text = (proc.stdout + proc.stderr).decode()
    assert "4.04" in text or "Not Found" in text, text
    assert "not found on server" in text


def test_well_known_core_lists_the_publication(site: Site, published: Dict[str, bytes]) -> None:
    proc = subprocess.run([AIOCOAP_CLIENT, site.coap(".well-known/core")], capture_output=True, timeout=60)
    text = proc.stdout.decode()
    for part in ("manifest", "slot0", "slot1"):
        assert f"</version_1/{part}>" in text, text


def test_publish_reports_every_missing_part_with_400(site: Site) -> None:
    resp = site.post("/publish", data={"publish_id": "v2"}, files={"slot0": ("s", b"x")})
    assert resp.status_code == 400
    assert "manifest" in resp.json()["message"] and "slot1" in resp.json()["message"]


@pytest.mark.parametrize("publish_id", ["..", ".", "a/b", "../static", ""])
def test_publish_id_cannot_escape(site: Site, publish_id: str) -> None:
    files = {k: (k, b"x") for k in ("manifest", "slot0", "slot1")}
    resp = site.post("/publish", data={"publish_id": publish_id}, files=files)
    assert resp.status_code == 400, resp.text
    assert not (site.srv.data_dir / "static").exists()


def test_publish_without_publish_id_is_400_not_500(site: Site) -> None:
    files = {k: (k, b"x") for k in ("manifest", "slot0", "slot1")}
    resp = site.post("/publish", files=files)
    assert resp.status_code == 400 and "publish_id" in resp.json()["message"]


def test_publish_and_notify_need_a_partner_token(site: Site) -> None:
    files = {k: (k, b"x") for k in ("manifest", "slot0", "slot1")}
    assert requests.post(site.srv.url + "/publish", data={"publish_id": "v3"}, files=files, timeout=30).status_code == 401
    assert site.post("/publish", token="wrong", data={"publish_id": "v3"}, files=files).status_code == 401
    assert requests.put(site.srv.url + "/notify", data={"publish_id": "v3", "device_urls": "127.0.0.1/x"},
                        timeout=30).status_code == 401


def test_another_partner_cannot_replace_or_notify(site: Site, published: Dict[str, bytes]) -> None:
    files = {k: (k, b"x") for k in ("manifest", "slot0", "slot1")}
    assert site.post("/publish", token=site.other_token, data={"publish_id": "version_1"}, files=files).status_code == 403
    resp = site.put("/notify", token=site.other_token, data={"publish_id": "version_1", "device_urls": "127.0.0.1/n"})
    assert resp.status_code == 403


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _children(pid: int) -> List[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.skipif(COAP_CLIENT is None, reason="libcoap's coap-client is not installed (apt-get install libcoap3-bin)")
def test_coap_workers_share_the_port_and_end_with_the_server(tmp_path: Path) -> None:
    """``--coap-workers 2``: two server processes on one UDP port; concurrent block-wise downloads (spread over
    both by the kernel) are byte-exact; the workers end with the server, even when it is killed (no orphan
    keeps the port)."""
    port = free_udp_port()
    srv = start_server(tmp_path / "data", None, extra=["--coap-port", str(port), "--coap-host", "127.0.0.1",
                                                       "--coap-workers", "2"])
    try:
        workers = [c for c in _children(srv.proc.pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(workers) == 2, workers
        pid = "p-" + uuid.uuid4().hex[:10]
        srv.admin("partner", "--username", f"{pid}@example.com", "--partner-id", pid)
        token = srv.admin("api-token", "--partner", pid)["token"]
        slot = os.urandom(200 * 1024 + 17)
        resp = requests.post(srv.url + "/publish", auth=("token", token), data={"publish_id": "w2"}, timeout=60,
                             files={"manifest": ("m", b"m"), "slot0": ("s0", slot), "slot1": ("s1", b"s1")})
        assert resp.status_code == 200, resp.text
        outs = [tmp_path / f"out{i}" for i in range(8)]
        procs = [subprocess.Popen([str(COAP_CLIENT), "-m", "get", "-o", str(o), f"coap://127.0.0.1:{port}/w2/slot0"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for o in outs]
        for proc in procs:
            assert proc.wait(120) == 0
        assert all(o.read_bytes() == slot for o in outs)
        os.kill(srv.proc.pid, 9)  # the server alone, as an OOM kill would: its workers notice and exit
        srv.proc.wait(10)
        stop = threading.Event()

        def traffic() -> None:  # datagrams keep coming: the workers must look at their parent anyway
            import socket

            socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]  # 8 source ports: both
            try:                                                                      # workers get some
                while not stop.is_set():
                    for sock in socks:
                        sock.sendto(bytes.fromhex("40000000"), ("127.0.0.1", port))  # a ping: a Reset each
                    time.sleep(0.05)
            finally:
                for sock in socks:
                    sock.close()

        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and any(_running(w) for w in workers):
                time.sleep(0.2)
        finally:
            stop.set()
            sender.join(5)
        alive = [w for w in workers if _running(w)]
        assert not alive, f"CoAP workers {alive} outlived the server"
    finally:
        stop_server(srv)


def test_serve_reports_a_coap_port_in_use_in_one_line(tmp_path: Path) -> None:
    import socket

    from .serverutil import free_port

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:  # no SO_REUSEPORT: the workers cannot join it
        taken.bind(("127.0.0.1", 0))
        port = str(taken.getsockname()[1])
        proc = run_cli("ota-build", "serve", "--port", str(free_port()), "--coap-host", "127.0.0.1", "--coap-port", port,
                       "--data-dir", str(tmp_path / "d"), timeout=120)
    assert_one_line_error(proc, 1, "--coap-port", f"127.0.0.1:{port}")


def test_serve_reports_a_coap_host_that_cannot_be_bound_in_one_line(tmp_path: Path) -> None:
    from .serverutil import free_port

    host = "x" * 70 + ".invalid"  # a DNS label longer than 63: getaddrinfo's UnicodeError, not an OSError
    proc = run_cli("ota-build", "serve", "--port", str(free_port()), "--coap-host", host, "--coap-port",
                   str(free_udp_port()), "--data-dir", str(tmp_path / "d"), timeout=120)
    assert_one_line_error(proc, 1, "--coap-host", host)


@pytest.mark.parametrize("value", ["0", "65"])
def test_serve_rejects_bad_coap_workers(tmp_path: Path, value: str) -> None:
    proc = run_cli("ota-build", "serve", "--coap-workers", value, "--data-dir", str(tmp_path / "d"))
    assert_one_line_error(proc, 2, "--coap-workers", value)


# --------------------------------------------------------------------------- notify

class Device(threading.Thread):
    """A CoAP device with a ``/notify`` resource (as the original's otatestnode) on 127.0.0.1."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.port = free_udp_port()
        self.payloads: List[bytes] = []
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()

    def run(self) -> None:
        import aiocoap
        from aiocoap import resource

        payloads = self.payloads

        class Notify(resource.Resource):  # type: ignore[misc]
            async def render_put(self, request: Any) -> Any:
                payloads.append(request.payload)
                return aiocoap.Message(code=aiocoap.CHANGED, payload=request.payload)

        site = resource.Site()
        site.add_resource(["notify"], Notify())
        asyncio.set_event_loop(self.loop)
        self.ctx = self.loop.run_until_complete(aiocoap.Context.create_server_context(site, bind=("127.0.0.1", self.port)))
        self.ready.set()
        self.loop.run_forever()


@pytest.fixture(scope="module")
def device() -> Tuple[Device, str]:
    dev = Device()
    dev.start()
    assert dev.ready.wait(30)
    return dev, f"127.0.0.1:{dev.port}/notify"


def test_notify_sends_the_exact_payload_and_reports_outcomes(site: Site, published: Dict[str, bytes],
                                                             device: Tuple[Device, str]) -> None:
    dev, url = device
    dead = f"127.0.0.1:{free_udp_port()}/notify"
    resp = site.put("/notify", data={"publish_id": "version_1", "device_urls": f"{url},{dead}"})
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    expected = f"coap://[127.0.0.1]:{site.coap_port}/version_1/manifest"
    assert doc["payload"] == expected
    assert dev.payloads[-1] == expected.encode()
    outcomes = {d["device"]: d["outcome"] for d in doc["devices"]}
    assert outcomes[url] == "acknowledged", doc
    assert outcomes[dead] in ("error", "timeout")


def test_notify_is_no_open_relay(site: Site, published: Dict[str, bytes], device: Tuple[Device, str]) -> None:
    dev, url = device
    before = len(dev.payloads)
    resp = site.put("/notify", data={"publish_id": "version_1", "device_urls": f"{url},10.1.2.3/notify"})
    assert resp.status_code == 403 and "10.1.2.3" in resp.json()["message"]
    assert len(dev.payloads) == before  # nothing sent when one device is out of range


@pytest.mark.parametrize("data,status", [({"device_urls": "127.0.0.1/n"}, 400), ({"publish_id": "version_1"}, 400),
                                         ({}, 400), ({"publish_id": "nope", "device_urls": "127.0.0.1/n"}, 404),
                                         ({"publish_id": "..", "device_urls": "127.0.0.1/n"}, 400)])
def test_notify_errors(site: Site, published: Dict[str, bytes], data: Dict[str, str], status: int) -> None:
    resp = site.put("/notify", data=data)
    assert resp.status_code == status, resp.text


def test_republish_replaces_atomically(site: Site, published: Dict[str, bytes], tmp_path: Path) -> None:
    files = {"manifest": b"m2", "slot0": b"a" * 5000, "slot1": b"b" * 5000}
    resp = site.post("/publish", data={"publish_id": "version_r"}, files={k: (k, v) for k, v in files.items()})
    assert resp.status_code == 200
    files2 = {"manifest": b"m3", "slot0": b"c" * 3000, "slot1": b"d" * 3000}
    resp = site.post("/publish", data={"publish_id": "version_r"}, files={k: (k, v) for k, v in files2.items()})
    assert resp.status_code == 200
    proc = subprocess.run([AIOCOAP_CLIENT, site.coap("version_r/slot1")], capture_output=True, timeout=60)
    assert proc.stdout == files2["slot1"]
    assert len(list((site.srv.data_dir / "coap" / ".v").glob("version_r.*"))) == 1


def _ipv6_sockets() -> bool:
    import socket

    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _coap_workers(data_dir: Path, bind: str, publish_id: str, files: Dict[str, bytes]) -> Iterator[int]:
    """``files`` published as ``publish_id`` in ``data_dir``, served by one CoAP worker process bound to ``bind`` on
    a free port (the port is yielded), as ``ota-build serve`` runs it."""
    from ota_build.server.coap import CoapServers
    from ota_build.server.publications import Publications

    Publications(str(data_dir)).publish(publish_id, "p", {k: [v] for k, v in files.items()})
    port = free_udp_port()
    servers = CoapServers(str(data_dir), bind, port, 1)
    servers.start()
    try:
        yield port
    finally:
        servers.stop()


# --------------------------------------------------------------------------- the message layer (decision 82)

def _exchange(port: int, datagram: bytes, timeout: float = 2.0, host: str = "127.0.0.1") -> Any:
    """Send one datagram to the CoAP server; its answer decoded by aiocoap, or None if none came."""
    import socket

    from aiocoap import Message

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(datagram, (host, port))
        try:
            return Message.decode(sock.recv(65536))
        except socket.timeout:
            return None


def _request(mtype: Any, mid: int, path: str = "", block: Any = None, code: Any = None, extra: Any = None) -> bytes:
    from aiocoap import GET, Message
    from aiocoap.optiontypes import BlockOption

    msg = Message(code=GET if code is None else code, uri_path=[p for p in path.split("/") if p])
    msg.mtype, msg.mid, msg.token = mtype, mid, mid.to_bytes(2, "big") + b"tk"
    if block is not None:
        msg.opt.block2 = BlockOption.BlockwiseTuple(block, False, 6)
    if extra is not None:
        msg.opt.add_option(extra)
    return bytes(msg.encode())


def test_confirmable_gets_a_piggybacked_ack_and_duplicates_the_same_answer(site: Site, published: Dict[str, bytes]) -> None:
    from aiocoap import ACK, CON, CONTENT

    datagram = _request(CON, 4242, "version_1/slot1", block=3)
    first, again = _exchange(site.coap_port, datagram), _exchange(site.coap_port, datagram)
    for answer in (first, again):
        assert answer.mtype == ACK and answer.mid == 4242 and answer.token == (4242).to_bytes(2, "big") + b"tk"
        assert answer.code == CONTENT and answer.payload == published["slot1"][3 * 1024:4 * 1024]
        assert answer.opt.block2.block_number == 3 and answer.opt.block2.more


def test_non_confirmable_gets_a_non_answer(site: Site, published: Dict[str, bytes]) -> None:
    from aiocoap import CONTENT, NON

    answer = _exchange(site.coap_port, _request(NON, 7, "version_1/manifest"))
    assert answer.mtype == NON and answer.token == (7).to_bytes(2, "big") + b"tk" and answer.code == CONTENT
    assert answer.payload == published["manifest"]


def test_ping_gets_a_reset_and_garbage_no_answer(site: Site, published: Dict[str, bytes]) -> None:
    from aiocoap import CON, EMPTY, RST, Message

    ping = Message(code=EMPTY)
    ping.mtype, ping.mid, ping.token = CON, 99, b""
    answer = _exchange(site.coap_port, ping.encode())
    assert answer is not None and answer.mtype == RST and answer.mid == 99
    assert _exchange(site.coap_port, b"\xff\x01", timeout=0.5) is None  # CoAP version 3: dropped
    assert _exchange(site.coap_port, _request(CON, 100, "version_1/manifest")).payload == published["manifest"]


def test_unknown_critical_option_is_402_and_other_methods_405(site: Site, published: Dict[str, bytes]) -> None:
    from aiocoap import BAD_OPTION, CON, METHOD_NOT_ALLOWED, POST
    from aiocoap.optiontypes import OpaqueOption

    answer = _exchange(site.coap_port, _request(CON, 5, "version_1/slot0", block=0, extra=OpaqueOption(65001, b"x")))
    assert answer.code == BAD_OPTION and b"65001" in answer.payload
    answer = _exchange(site.coap_port, _request(CON, 6, "version_1/slot0", code=POST))
    assert answer.code == METHOD_NOT_ALLOWED


def test_a_datagram_aiocoap_cannot_decode_does_not_end_the_worker(site: Site, published: Dict[str, bytes]) -> None:
    from aiocoap import CON

    assert _exchange(site.coap_port, bytes.fromhex("40010001b2fffe"), timeout=0.5) is None  # Uri-Path not UTF-8
    assert _exchange(site.coap_port, _request(CON, 8, "version_1/manifest")).payload == published["manifest"]


def test_acks_resets_and_responses_are_not_requests(site: Site, published: Dict[str, bytes]) -> None:
    from aiocoap import ACK, CON, CONTENT, NON, RST

    for mtype in (ACK, RST):
        assert _exchange(site.coap_port, _request(mtype, 9, "version_1/manifest"), timeout=0.5) is None
    answer = _exchange(site.coap_port, _request(CON, 10, "version_1/manifest", code=CONTENT))
    assert answer.mtype == RST and answer.mid == 10
    assert _exchange(site.coap_port, _request(NON, 11, "version_1/manifest", code=CONTENT), timeout=0.5) is None
    mids = {_exchange(site.coap_port, _request(NON, 12, "version_1/manifest")).mid for _ in range(3)}
    assert len(mids) == 3  # each NON response has a Message ID of its own


def test_accept_proxy_and_repeated_block2(site: Site, published: Dict[str, bytes]) -> None:
    from aiocoap import BAD_OPTION, CON, CONTENT, NOT_ACCEPTABLE, PROXYING_NOT_SUPPORTED
    from aiocoap.optiontypes import BlockOption, StringOption, UintOption

    answer = _exchange(site.coap_port, _request(CON, 13, "version_1/manifest", extra=UintOption(17, 42)))
    assert answer.code == CONTENT and answer.payload == published["manifest"]
    answer = _exchange(site.coap_port, _request(CON, 14, ".well-known/core", extra=UintOption(17, 40)))
    assert answer.code == CONTENT and b"version_1" in answer.payload
    answer = _exchange(site.coap_port, _request(CON, 15, "version_1/manifest", extra=UintOption(17, 50)))
    assert answer.code == NOT_ACCEPTABLE
    answer = _exchange(site.coap_port, _request(CON, 16, "", extra=StringOption(35, "coap://example.com/x")))
    assert answer.code == PROXYING_NOT_SUPPORTED
    second = BlockOption(23)
    second.value = BlockOption.BlockwiseTuple(1, False, 6)
    answer = _exchange(site.coap_port, _request(CON, 17, "version_1/slot0", block=0, extra=second))
    assert answer.code == BAD_OPTION and b"Block2" in answer.payload


def test_every_block_of_a_file_carries_its_etag(site: Site) -> None:
    from aiocoap import CON

    def publish(fill: bytes) -> None:
        files = {"manifest": b"m", "slot0": fill * 4096, "slot1": b"s"}
        assert site.post("/publish", data={"publish_id": "etag"}, files={k: (k, v) for k, v in files.items()}).ok

    publish(b"A")
    tags = {bytes(_exchange(site.coap_port, _request(CON, n, "etag/slot0", block=n)).opt.etag) for n in range(4)}
    assert len(tags) == 1 and len(next(iter(tags))) == 8
    publish(b"B")
    assert bytes(_exchange(site.coap_port, _request(CON, 30, "etag/slot0", block=0)).opt.etag) not in tags


def test_a_republished_file_is_served_at_once_though_its_blocks_were_cached(site: Site) -> None:
    from aiocoap import CON

    def publish(fill: bytes) -> None:
        files = {"manifest": b"m", "slot0": fill * 4096, "slot1": b"s"}
        assert site.post("/publish", data={"publish_id": "cached"}, files={k: (k, v) for k, v in files.items()}).ok

    publish(b"A")
    assert _exchange(site.coap_port, _request(CON, 1, "cached/slot0", block=2)).payload == b"A" * 1024
    assert _exchange(site.coap_port, _request(CON, 2, "cached/slot0", block=2)).payload == b"A" * 1024  # cached
    publish(b"B")
    assert _exchange(site.coap_port, _request(CON, 3, "cached/slot0", block=2)).payload == b"B" * 1024


def test_cached_blocks_are_not_read_again(tmp_path: Path) -> None:
    """The cache is used: a block answered once is answered from memory while the file's identity (device, inode,
    mtime, size) is unchanged, even if its bytes were changed in place behind the server's back (publications are
    never changed in place: a republish swaps a link, a new identity)."""
    from aiocoap import CON, Message

    from ota_build.server.coap import PublicationResource, StatelessGetServer
    from ota_build.server.publications import Publications

    publications = Publications(str(tmp_path))
    publications.publish("inplace", "p", {"manifest": [b"m"], "slot0": [b"A" * 4096], "slot1": [b"s"]})
    server = StatelessGetServer(PublicationResource(publications))
    assert Message.decode(server.answer(_request(CON, 1, "inplace/slot0", block=1))).payload == b"A" * 1024
    path = publications.file_name("inplace", "slot0")
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.write(b"B" * 4096)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert Message.decode(server.answer(_request(CON, 2, "inplace/slot0", block=1))).payload == b"A" * 1024
    assert Message.decode(server.answer(_request(CON, 3, "inplace/slot0", block=2))).payload == b"B" * 1024
    uncached = StatelessGetServer(PublicationResource(publications), cache_blocks=0)
    assert Message.decode(uncached.answer(_request(CON, 4, "inplace/slot0", block=1))).payload == b"B" * 1024


@pytest.mark.skipif(not _ipv6_sockets(), reason="no IPv6 sockets on this machine")
def test_a_worker_serves_on_ipv6_loopback_and_reports_a_bad_host_in_one_line(tmp_path: Path) -> None:
    from aiocoap import CON

    from ota_build.server.coap import CoapServers

    with _coap_workers(tmp_path, "::1", "six", {"manifest": b"m6", "slot0": b"s", "slot1": b"s"}) as port:
        assert _exchange(port, _request(CON, 1, "six/manifest"), host="::1").payload == b"m6"
    with pytest.raises(OSError, match="cannot listen on UDP"):
        CoapServers(str(tmp_path), "x" * 70 + ".invalid", port, 1).start()


def test_requests_to_a_group_or_broadcast_address_are_not_answered() -> None:
    import socket
    import struct

    from ota_build.server.coap import IP_PKTINFO, reply_pktinfo

    def v4(local: str, dest: str) -> Any:
        data = struct.pack("i4s4s", 3, socket.inet_aton(local), socket.inet_aton(dest))
        return reply_pktinfo([(socket.IPPROTO_IP, IP_PKTINFO, data)])

    def v6(dest: str) -> Any:
        data = socket.inet_pton(socket.AF_INET6, dest) + struct.pack("I", 3)
        return reply_pktinfo([(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, data)])

    assert v4("127.0.0.2", "127.0.0.2")[2] == bytes(4) + socket.inet_aton("127.0.0.2") * 2  # index 0: routed
    assert v4("127.0.0.1", "127.255.255.255") is None  # a broadcast
    assert v4("192.0.2.1", "224.0.1.187") is None  # All CoAP Nodes
    assert v6("::1")[2] == socket.inet_pton(socket.AF_INET6, "::1") + bytes(4)
    assert v6("ff02::fd") is None
    assert v6("::ffff:224.0.1.187") is None and v6("::ffff:255.255.255.255") is None
    assert reply_pktinfo([]) is None


def test_a_broadcast_request_gets_no_answer(tmp_path: Path) -> None:
    import socket

    from aiocoap import CON

    with _coap_workers(tmp_path, "0.0.0.0", "b", {"manifest": b"m", "slot0": b"s", "slot1": b"s"}) as port:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.settimeout(1.0)
            sock.sendto(_request(CON, 1, "b/manifest"), ("127.255.255.255", port))
            with pytest.raises(socket.timeout):
                sock.recv(2048)
        assert _exchange(port, _request(CON, 2, "b/manifest")).payload == b"m"  # unicast still answered


def test_the_block_cache_is_bounded(tmp_path: Path) -> None:
    from aiocoap import CON

    from ota_build.server.coap import PublicationResource, StatelessGetServer
    from ota_build.server.publications import Publications

    publications = Publications(str(tmp_path))
    data = os.urandom(40 * 1024)
    publications.publish("bounded", "p", {"manifest": [b"m"], "slot0": [data], "slot1": [b"s"]})
    server = StatelessGetServer(PublicationResource(publications), cache_blocks=8)
    from aiocoap import Message

    for n in range(40):
        answer = Message.decode(server.answer(_request(CON, n, "bounded/slot0", block=n)))
        assert answer.payload == data[n * 1024:(n + 1) * 1024]
        assert len(server._cache) <= 8


def _connected_exchange(host: str, port: int, datagram: bytes) -> Any:
    """Like ``_exchange`` from a connected socket: an answer from any other source address than ``host`` is not
    received (the kernel drops it), so None means "no answer from the address asked"."""
    import socket

    from aiocoap import Message

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        sock.connect((host, port))
        sock.send(datagram)
        try:
            return Message.decode(sock.recv(65536))
        except socket.timeout:
            return None


@pytest.mark.parametrize("bind", ["0.0.0.0", "::"])
def test_a_wildcard_bind_answers_from_the_address_asked(tmp_path: Path, bind: str) -> None:
    """Linux answers for all of 127/8: a request to 127.0.0.2 must be answered from 127.0.0.2 (the kernel alone
    would pick 127.0.0.1, which a connected client drops); ``::`` is dual-stack."""
    from aiocoap import CON

    if bind == "::" and not _ipv6_sockets():
        pytest.skip("no IPv6 sockets on this machine")
    with _coap_workers(tmp_path, bind, "any", {"manifest": b"m", "slot0": b"s0" * 1500, "slot1": b"s"}) as port:
        targets = ["127.0.0.1", "127.0.0.2"] + (["::1"] if bind == "::" else [])
        for n, host in enumerate(targets):
            answer = _connected_exchange(host, port, _request(CON, n, "any/slot0", block=1))
            assert answer is not None, f"no answer from {host}"
            assert answer.payload == (b"s0" * 1500)[1024:2048]


# --------------------------------------------------------------------------- ota-build publish / suit

def _run(*args: str, env: Any = None) -> subprocess.CompletedProcess:
    from .conftest import script

    return subprocess.run(script("ota-build") + list(args), capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    from ota_build.core.signing import generate_key

    d = tmp_path_factory.mktemp("keys")
    generate_key("ecdsa-p256", str(d / "k.pem"), str(d / "k.pub.pem"), backend="cryptography")
    return d / "k.pem", d / "k.pub.pem"


def test_publish_cli_signs_suit_publishes_and_notifies(site: Site, device: Tuple[Device, str], keys: Tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    dev, url = device
    (tmp_path / "s0").write_bytes(os.urandom(3000))
    (tmp_path / "s1").write_bytes(os.urandom(4000))
    port = site.srv.url.rsplit(":", 1)[1]
    # the seed README's form: the publish id first, the token in --ota-host as the original client can send it
    proc = _run("publish", "--ota-host", f"token:{site.token}@127.0.0.1", "--ota-port", port, "--slot0",
                str(tmp_path / "s0"), "--slot1", str(tmp_path / "s1"), "--key", str(keys[0]), "--coap-host", "127.0.0.1",
                "--coap-port", str(site.coap_port), "--seqnr", "7", "version_cli", url)
    assert proc.returncode == 0, proc.stderr
    assert dev.payloads[-1] == f"coap://[127.0.0.1]:{site.coap_port}/version_cli/manifest".encode()
    got = subprocess.run([AIOCOAP_CLIENT, site.coap("version_cli/manifest")], capture_output=True, timeout=60)
    (tmp_path / "m.cbor").write_bytes(got.stdout)
    for part in ("slot0", "slot1"):
        data = subprocess.run([AIOCOAP_CLIENT, site.coap(f"version_cli/{part}")], capture_output=True, timeout=60)
        (tmp_path / f"got-{part}").write_bytes(data.stdout)
    ok = _run("suit", "--verify", str(tmp_path / "m.cbor"), "--trusted-key", str(keys[1]), "--current-sequence", "6",
              "--slot0", str(tmp_path / "got-slot0"), "--slot1", str(tmp_path / "got-slot1"))
    assert ok.returncode == 0, ok.stderr
    assert '"sequenceNumber": 7' in ok.stdout and f"127.0.0.1]:{site.coap_port}/version_cli/slot1" in ok.stdout
    replay = _run("suit", "--verify", str(tmp_path / "m.cbor"), "--trusted-key", str(keys[1]), "--current-sequence", "7")
    assert replay.returncode == 15 and "not above" in replay.stderr
    # --notify-only with --publish-id and the token from the environment
    proc = _run("publish", "--ota-port", port, "--ota-host", "127.0.0.1", "--publish-id", "version_cli", "--notify-only",
                url, env={"OTA_API_TOKEN": site.token})
    assert proc.returncode == 0, proc.stderr
    assert "acknowledged" in proc.stdout


def test_suit_cli_writes_and_refuses_hostile_slots(keys: Tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "s0").write_bytes(b"a" * 100)
    (tmp_path / "s1").write_bytes(b"b" * 100)
    out = tmp_path / "m.cbor"
    proc = _run("suit", "--slot0", str(tmp_path / "s0"), "--slot1", str(tmp_path / "s1"), "-k", str(keys[0]), "-o", str(out),
                "--seqnr", "3")
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "s1").write_bytes(b"b" * 99)
    bad = _run("suit", "--verify", str(out), "--trusted-key", str(keys[1]), "--slot1", str(tmp_path / "s1"))
    assert bad.returncode == 11 and "truncated" in bad.stderr
    (tmp_path / "s1").write_bytes(b"c" * 100)
    bad = _run("suit", "--verify", str(out), "--trusted-key", str(keys[1]), "--slot1", str(tmp_path / "s1"))
    assert bad.returncode == 10 and "digest mismatch" in bad.stderr


# --------------------------------------------------------------------------- ota-agent coap (the device)

def _agent_device(tmp_path: Path, pub: Path, sequence: int = -1) -> Tuple[subprocess.Popen, str]:
    import json as _json
    import time as _time

    from .conftest import script

    state = tmp_path / "dev"
    state.mkdir()
    if sequence >= 0:
        (state / "state.json").write_text(_json.dumps({"sequence": sequence, "active": 0}))
    port = free_udp_port()
    proc = subprocess.Popen(script("ota-agent") + ["coap", "--once", "--host", "127.0.0.1", "--port", str(port),
                                                   "--state-dir", str(state), "--trusted-key", str(pub)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = _time.monotonic() + 60
    while _time.monotonic() < deadline:
        probe = subprocess.run([AIOCOAP_CLIENT, f"coap://127.0.0.1:{port}/status"], capture_output=True, timeout=30)
        if probe.returncode == 0 and b"sequence" in probe.stdout:
            return proc, f"127.0.0.1:{port}/notify"
        _time.sleep(0.2)
    proc.kill()
    raise RuntimeError("ota-agent coap did not start")


def _publish_envelope(site: Site, publish_id: str, envelope: bytes, slot0: bytes, slot1: bytes) -> None:
    resp = site.post("/publish", data={"publish_id": publish_id},
                     files={"manifest": ("m", envelope), "slot0": ("s0", slot0), "slot1": ("s1", slot1)})
    assert resp.status_code == 200, resp.text


def _manifest(site: Site, publish_id: str, key: Path, slot0: bytes, slot1: bytes, seq: int, tmp_path: Path) -> bytes:
    from ota_build.core import suit
    from ota_build.core.signing import make_signer

    (tmp_path / "m0").write_bytes(slot0)
    (tmp_path / "m1").write_bytes(slot1)
    base = f"coap://[127.0.0.1]:{site.coap_port}/{publish_id}"
    return suit.write_manifest([str(tmp_path / "m0"), str(tmp_path / "m1")], [f"{base}/slot0", f"{base}/slot1"], seq,
                               make_signer(str(key), backend="cryptography"))


def test_coap_device_installs_into_its_inactive_slot(site: Site, keys: Tuple[Path, Path], tmp_path: Path) -> None:
    slot0, slot1 = os.urandom(40000), os.urandom(50000)
    _publish_envelope(site, "dev_ok", _manifest(site, "dev_ok", keys[0], slot0, slot1, 5, tmp_path), slot0, slot1)
    proc, url = _agent_device(tmp_path, keys[1])
    resp = site.put("/notify", data={"publish_id": "dev_ok", "device_urls": url})
    assert resp.json()["devices"][0]["outcome"] == "acknowledged"
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert (tmp_path / "dev" / "slot1.bin").read_bytes() == slot1
    assert '"active": 1' in (tmp_path / "dev" / "state.json").read_text()
    assert "installed: sequence number 5 into slot 1" in err


def _hostile(site: Site, tmp_path: Path, pub: Path, publish_id: str, envelope: bytes, slot0: bytes, slot1: bytes,
             sequence: int = -1) -> Tuple[int, str]:
    _publish_envelope(site, publish_id, envelope, slot0, slot1)
    proc, url = _agent_device(tmp_path, pub, sequence)
    site.put("/notify", data={"publish_id": publish_id, "device_urls": url})
    _, err = proc.communicate(timeout=120)
    refused = [line for line in err.splitlines() if "refused:" in line]
    assert len(refused) == 1, err
    assert not (tmp_path / "dev" / "slot1.bin").exists()
    return proc.returncode, refused[0]


def test_coap_device_refuses_hostile_manifests(site: Site, keys: Tuple[Path, Path], tmp_path: Path) -> None:
    import cbor2

    from ota_build.core.signing import generate_key

    slot0, slot1 = os.urandom(3000), os.urandom(4000)
    good = _manifest(site, "h_1", keys[0], slot0, slot1, 9, tmp_path)
    cases = []
    doc = cbor2.loads(good)
    del doc[2]
    cases.append(("h_unsigned", cbor2.dumps(doc), slot1, -1, 12, "unsigned"))
    generate_key("ed25519", str(tmp_path / "x.pem"), str(tmp_path / "x.pub.pem"), backend="cryptography")
    cases.append(("h_wrongkey", _manifest(site, "h_wrongkey", tmp_path / "x.pem", slot0, slot1, 9, tmp_path), slot1, -1,
                  13, "not among"))
    cases.append(("h_replay", _manifest(site, "h_replay", keys[0], slot0, slot1, 9, tmp_path), slot1, 9, 15, "not above"))
    cases.append(("h_digest", _manifest(site, "h_digest", keys[0], slot0, slot1, 9, tmp_path), os.urandom(4000), -1, 10,
                  "digest mismatch"))
    cases.append(("h_trunc", _manifest(site, "h_trunc", keys[0], slot0, slot1, 9, tmp_path), slot1[:3999], -1, 11,
                  "truncated"))
    cases.append(("h_big", _manifest(site, "h_big", keys[0], slot0, slot1, 9, tmp_path), slot1 + os.urandom(6000), -1,
                  10, "larger than 4000 bytes"))
    for publish_id, envelope, served_slot1, seq, code, words in cases:
        case_dir = tmp_path / publish_id
        case_dir.mkdir()
        rc, line = _hostile(site, case_dir, keys[1], publish_id, envelope, slot0, served_slot1, seq)
        assert (rc, words in line) == (code, True), (publish_id, rc, line)


class _CountingContext:
    """An aiocoap client context that counts requests and runs ``hook`` before request number ``at``."""

    def __init__(self, ctx: Any, at: int = 0, hook: Any = None):
        self.ctx, self.at, self.hook, self.requests = ctx, at, hook, 0

    def request(self, message: Any, handle_blockwise: bool = True) -> Any:
        self.requests += 1
        if self.requests == self.at:
            self.hook()
        return self.ctx.request(message, handle_blockwise=handle_blockwise)


def test_coap_device_download_is_bounded_streamed_and_notices_a_republish(tmp_path: Path) -> None:
    """The device takes a slot block by block: it stops at the first byte past the manifest's size (not after the
    whole oversize file), and a republish between two blocks (another ETag) ends the download with an error."""
    import aiocoap

    from ota_build.core.errors import CorruptError, OtaError
    from ota_build.core.signing.keys import Keyring
    from ota_build.device.coapdev import CoapDevice
    from ota_build.server.publications import Publications

    publications = Publications(str(tmp_path / "data"))
    first, second = os.urandom(20 * 1024), os.urandom(20 * 1024)
    device = CoapDevice(str(tmp_path / "dev"), Keyring())
    url = ""

    async def take(ctx: Any, limit: int) -> bytes:
        return b"".join([chunk async for chunk in device.blocks(ctx, url, limit, "slot image")])

    async def run() -> None:
        ctx = await aiocoap.Context.create_client_context()
        try:
            counting = _CountingContext(ctx)
            with pytest.raises(CorruptError, match="slot image is larger than 3000 bytes"):
                await take(counting, 3000)
            assert counting.requests == 3  # blocks 0, 1 and 2: the third passes 3000 bytes
            assert await take(ctx, len(first)) == first
            republish = _CountingContext(ctx, at=4, hook=lambda: publications.publish(
                "big", "p", {"manifest": [b"m"], "slot0": [second], "slot1": [b"s"]}))
            with pytest.raises(OtaError, match="changed during the download"):
                await take(republish, len(first))
            assert await take(ctx, len(second)) == second
        finally:
            await ctx.shutdown()

    with _coap_workers(tmp_path / "data", "127.0.0.1", "big", {"manifest": b"m", "slot0": first, "slot1": b"s"}) as port:
        url = f"coap://127.0.0.1:{port}/big/slot0"
        asyncio.run(run())


def test_coap_device_refuses_a_server_that_sends_short_blocks(tmp_path: Path) -> None:
    """A server answering every block with more=True and no bytes would keep a naive client asking forever."""
    import aiocoap
    from aiocoap import resource
    from aiocoap.optiontypes import BlockOption

    from ota_build.core.errors import OtaError
    from ota_build.core.signing.keys import Keyring
    from ota_build.device.coapdev import CoapDevice

    class Endless(resource.Resource):  # type: ignore[misc]
        async def needs_blockwise_assembly(self, request: Any) -> bool:
            return False

        async def render_get(self, request: Any) -> Any:
            answer = aiocoap.Message(code=aiocoap.CONTENT, payload=b"")
            number = request.opt.block2.block_number if request.opt.block2 else 0
            answer.opt.block2 = BlockOption.BlockwiseTuple(number, True, 6)
            return answer

    device = CoapDevice(str(tmp_path / "dev"), Keyring(), timeout=10)
    port = free_udp_port()

    async def run() -> None:
        site = resource.Site()
        site.add_resource(["slot"], Endless())
        server = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port),
                                                             transports=["simplesocketserver"])
        client = await aiocoap.Context.create_client_context()
        try:
            with pytest.raises(OtaError, match="block 0 has 0 bytes, not 1024"):
                async for _ in device.blocks(client, f"coap://127.0.0.1:{port}/slot", 1 << 20, "slot image"):
                    pass
        finally:
            await client.shutdown()
            await server.shutdown()

    asyncio.run(run())


def test_coap_device_removes_what_an_interrupted_download_left(tmp_path: Path) -> None:
    from ota_build.core.signing.keys import Keyring
    from ota_build.device.coapdev import CoapDevice

    state = tmp_path / "dev"
    state.mkdir()
    (state / ".slot1.bin.part.k2j3.tmp").write_bytes(b"x" * 5000)  # atomic_open's name, left by a kill
    (state / "slot0.bin").write_bytes(b"kept")
    CoapDevice(str(state), Keyring())
    assert sorted(p.name for p in state.iterdir()) == ["slot0.bin"]


def test_web_page_lists_publications(site: Site, published: Dict[str, bytes]) -> None:
    """The original's page crashed once anything was published (it listed os.listdir strings as objects)."""
    page = requests.get(site.srv.url + "/", timeout=30)
    assert page.status_code == 200
    row = page.text.split('id="publications"', 1)[1].split("</table>", 1)[0]
    assert "version_1" in row and str(SLOT_BYTES) in row and "300" in row


def test_coap_demo_runs_the_journey(tmp_path: Path) -> None:
    proc = _run("coap-demo", "--workdir", str(tmp_path / "demo"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "notify 127.0.0.1:" in proc.stdout and ": acknowledged" in proc.stdout
    assert "device: installed: sequence number" in proc.stdout


def test_the_original_clients_requests_work_with_the_token_in_its_url(site: Site, device: Tuple[Device, str]) -> None:
    """client/publish.py builds 'http://{}:{}/publish'.format(args.ota_host, args.ota_port) and sends exactly these
    forms; with --ota-host token:KEY@127.0.0.1 requests turns the URL's credentials into HTTP Basic."""
    _, url = device
    ota_host, ota_port = f"token:{site.token}@127.0.0.1", site.srv.url.rsplit(":", 1)[1]
    files = {"manifest": b"opaque manifest", "slot0": b"s0" * 700, "slot1": b"s1" * 900}
    resp = requests.post("http://{}:{}/publish".format(ota_host, ota_port), files={k: v for k, v in files.items()},
                         data={"publish_id": "orig_1"}, timeout=30)
    assert resp.status_code == 200, resp.text
    resp = requests.put("http://{}:{}/notify".format(ota_host, ota_port),
                        data={"publish_id": "orig_1", "device_urls": ",".join([url])}, timeout=30)
    assert resp.status_code == 200 and resp.json()["devices"][0]["outcome"] == "acknowledged"
    got = subprocess.run([AIOCOAP_CLIENT, site.coap("orig_1/slot1")], capture_output=True, timeout=60)
    assert got.stdout == files["slot1"]
