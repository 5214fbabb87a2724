"""The HTTP client (``OtaClient``) against servers that misbehave: one that accepts
connections and never answers, one whose answer to a request is lost on the way
back, a web server that is not an OTA server, and malformed server URLs.

Everything is real: loopback sockets, ``http.server``, and the real OTA server
(``partner`` fixture) behind a small proxy that swallows one answer.
"""

from __future__ import annotations

import functools
import http.client
import http.server
import json
import logging
import re
import socket
import threading
import time
from typing import Iterator, List, Optional, Tuple

import pytest
import requests

from ota_build.partner.client import OtaClient
from ota_build.core.config import NetworkSettings, load_config
from ota_build.core.errors import ServerError

from .conftest import SEED_CONFIG, assert_one_line_error, run_cli, write_config
from .serverutil import free_port

SEED = json.loads(SEED_CONFIG)
SECRETS = (SEED["userpw"], SEED["auth-string"])
FAST = {"OTA_CONNECT_TIMEOUT": "1", "OTA_READ_TIMEOUT": "0.5", "OTA_RETRIES": "2"}


def warnings_and_error(proc) -> Tuple[List[str], List[str]]:  # noqa: ANN001
    """stderr split into WARNING lines and the other (non-empty) lines."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return [x for x in lines if x.startswith("WARNING: ")], [x for x in lines if not x.startswith("WARNING: ")]


class SilentServer:
    """Listens on 127.0.0.1, accepts every connection, reads nothing, never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: List[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            self.conns.append(conn)

    def connections(self, settle: float = 0.3) -> int:
        """How many connections were accepted (after letting a last one arrive)."""
        time.sleep(settle)
        return len(self.conns)

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self._stop.set()
        self._thread.join()
        for conn in self.conns:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    srv = SilentServer()
    yield srv
    srv.close()


class LosingProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream``: it passes every request on and the answer back,
    except for the first request whose ``"METHOD path"`` matches ``lose`` (a regex): that one the server
    carries out, but its answer never reaches the client (as when a connection breaks at the wrong moment).
    Requests are parsed by the standard library's ``http.server``."""

    def __init__(self, upstream: str, lose: str) -> None:
        host, port = upstream.split("//", 1)[1].split(":")
        self.upstream = (host, int(port))
        self.lose: Optional[str] = lose
        self.seen: List[str] = []
        self.lost: List[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the client uses it

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = f"{self.command} {self.path}"
                proxy.seen.append(request)
                up = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for key, value in self.headers.items():
                    up.putheader(key, value)
                up.endheaders(body)
                resp = up.getresponse()
                payload = resp.read()
                up.close()
                if proxy.lose and re.fullmatch(proxy.lose, request):
                    proxy.lose = None
                    proxy.lost.append(request)
                    self.connection.recv(1)  # the server did it; the client hears nothing until it hangs up
                    self.close_connection = True
                    return
                self.send_response_only(resp.status, resp.reason)
                for key, value in resp.getheaders():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def count(self, pattern: str) -> int:
        """How many requests matching ``pattern`` reached the proxy."""
        return sum(1 for r in self.seen if re.fullmatch(pattern, r))

    def close(self) -> None:
        """Stop accepting connections."""
        self.server.shutdown()
        self._thread.join()
        self.server.server_close()


@pytest.fixture
def proxy_factory() -> Iterator:
    made: List[LosingProxy] = []

    def make(upstream: str, lose: str) -> LosingProxy:
        made.append(LosingProxy(upstream, lose))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


# --------------------------------------------------------------------------- a server that never answers

def test_silent_server_fails_in_bounded_time_with_one_warning_per_retry(seed_config, silent):
    start = time.monotonic()
    proc = run_cli("partner-ota-hub-deploy", "-c", str(seed_config), "--list", cwd=seed_config.parent,
                   env={**FAST, "OTA_SERVER": silent.url, "OTA_CREDENTIALS_FILE": ""}, timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 3, proc.stderr
    warnings, others = warnings_and_error(proc)
    assert len(warnings) == 2 and len(others) == 1, proc.stderr
    for n, line in enumerate(warnings, 1):
        assert f"no answer from {silent.url} within 0.5 s (read timeout); retry {n} of 2" in line
    assert others[0].startswith("partner-ota-hub-deploy: error: POST /oauth/token: no answer")
    assert others[0].endswith("(3 attempts)")
    assert "Traceback" not in proc.stderr
    for secret in SECRETS:
        assert secret not in proc.stderr + proc.stdout
    assert silent.connections() == 3
    # 3 x 0.5 s read timeout + 1 s + 2 s back-off, plus the interpreter's start
    assert elapsed < 15


@pytest.mark.parametrize("method,safe,attempts", [("GET", None, 3), ("PUT", None, 3), ("POST", None, 1),
                                                  ("POST", True, 3)])
def test_only_safe_requests_are_retried_after_a_read_timeout(seed_config, silent, method, safe, attempts):
    cfg = load_config(str(seed_config), env={"OTA_SERVER": silent.url})
    client = OtaClient(cfg, NetworkSettings(connect_timeout=1, read_timeout=0.3, retries=2, backoff=0.05))
    with pytest.raises(ServerError) as exc:
        client.request(method, "/v1/anything", auth=False, retry_safe=safe)
    assert "read timeout" in str(exc.value)
    assert ("not retried" in str(exc.value)) == (attempts == 1)
    assert silent.connections() == attempts


def test_post_is_retried_when_it_cannot_have_been_sent(seed_config, caplog):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    cfg = load_config(str(seed_config), env={"OTA_SERVER": url})
    client = OtaClient(cfg, NetworkSettings(connect_timeout=1, read_timeout=1, retries=2, backoff=0.05))
    with caplog.at_level(logging.WARNING, logger="ota_build.partner.client"):
        with pytest.raises(ServerError, match=r"POST /v1/anything: cannot reach .*refused \(3 attempts\)"):
            client.request("POST", "/v1/anything", auth=False)
    retries = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(retries) == 2 and "retry 2 of 2" in retries[1], retries


# --------------------------------------------------------------------------- a lost answer

def test_lost_answer_to_a_create_is_not_retried_into_a_409(partner, proxy_factory):
    p = partner
    proxy = proxy_factory(p.server.url, r"POST /v1/ota/partners/[^/]+/pool")
    proc = run_cli("partner-ota-hub-uploader", "-c", str(p.conf), "-s", "-n", "5", "--createOTARecord",
                   cwd=p.dir, env={**p.env, "OTA_SERVER": proxy.url, "OTA_READ_TIMEOUT": "1"}, timeout=60)
    assert_one_line_error(proc, 3, f"POST /v1/ota/partners/{p.partner_id}/pool", "read timeout", "not retried")
    assert "409" not in proc.stderr
    assert proxy.lost and proxy.count(r"POST .*/pool") == 1
    assert not (p.dir / "full_ota_record.json").exists()
    # the server did create it: one record, which the user finds on the next try
    token = p.access_token()
    exists = requests.get(f"{p.server.url}/v1/ota/partners/{p.partner_id}/pool/types/5/names/Potenco-test/"
                          f"versions/1.0.5/exists", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert exists.json() == {"value": True}


def test_upload_resumes_after_a_lost_answer_to_a_chunk(partner, keys, proxy_factory):
    p = partner
    run_cli("partner-ota-hub-uploader", "-c", str(p.conf), "-s", "-n", "6", "--createOTARecord", cwd=p.dir,
            env=p.env, check=0)
    rootfs = p.dir / "rootfs.tar.gz"
    rootfs.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 1000)
    run_cli("ota-build", "package", str(rootfs), "-r", str(p.dir / "full_ota_record.json"),
            "-k", keys["ed25519"]["private"], "-o", str(p.dir / "hub_update.bin"), check=0)
    proxy = proxy_factory(p.server.url, r"PUT /v1/ota/partners/[^/]+/binaries/uploads/[^/]+")
    proc = run_cli("partner-ota-hub-uploader", "-c", str(p.conf), "-s", "-n", "6", "--uploadOTAImage", cwd=p.dir,
                   env={**p.env, "OTA_SERVER": proxy.url, "OTA_READ_TIMEOUT": "1"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "image id" in proc.stdout
    warnings, others = warnings_and_error(proc)
    assert others == [] and len(warnings) == 1, proc.stderr
    assert "upload of hub_update.bin interrupted at byte 0" in warnings[0] and "read timeout" in warnings[0]
    # the server had the bytes: the client asked where to go on and sent nothing twice
    assert proxy.lost and proxy.count(r"PUT .*/binaries/uploads/.*") == 1
    assert proxy.count(r"GET .*/binaries/uploads/.*") == 1
    assert not (p.dir / "hub_update.bin.upload").exists()


# --------------------------------------------------------------------------- not an OTA server

class _HtmlEverywhere(http.server.BaseHTTPRequestHandler):
    """A web server that answers every request with 200 and an HTML page."""

    def _page(self) -> None:
        body = b"<!DOCTYPE html><html><body>Welcome to nginx!</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _page

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


@pytest.mark.parametrize("kind,status", [("http.server", 501), ("html-200", 200)])
def test_a_web_server_that_is_not_an_ota_server(seed_config, tmp_path, kind, status):
    handler = functools.partial(_Quiet, directory=str(tmp_path)) if kind == "http.server" else _HtmlEverywhere
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{web.server_address[1]}"
    try:
        proc = run_cli("partner-ota-hub-deploy", "-c", str(seed_config), "--list", cwd=tmp_path,
                       env={"OTA_SERVER": url, "OTA_CREDENTIALS_FILE": ""}, timeout=60)
    finally:
        web.shutdown()
        web.server_close()
    assert_one_line_error(proc, 3, f"POST /oauth/token: HTTP {status} from {url}: "
                                   "not an OTA server response (text/html)")
    assert "<" not in proc.stderr


# --------------------------------------------------------------------------- settings

BAD_URLS = [
    ("notaurl", "no scheme"),
    ("ftp://ota.example.com", "unsupported scheme 'ftp'"),
    ("http://", "no host"),
    ("https://ota.example.com:99999", "bad host or port"),
    ("http://ota.example.com/?x=1", "query"),
]


@pytest.mark.parametrize("value,problem", BAD_URLS, ids=[v for v, _ in BAD_URLS])
@pytest.mark.parametrize("tool", [["partner-ota-hub-deploy", "--list"], ["ota-build", "list"],
                                  ["partner-ota-hub-uploader", "-s", "-n", "1", "--createOTARecord"]],
                         ids=["deploy", "ota-build", "uploader"])
def test_bad_server_url_is_one_line_naming_the_setting(seed_config, value, problem, tool):
    proc = run_cli(*tool, "-c", str(seed_config), cwd=seed_config.parent,
                   env={"OTA_SERVER": value, "OTA_CREDENTIALS_FILE": ""})
    assert_one_line_error(proc, 2, f"OTA_SERVER: {value!r} is not a server URL", problem)
    assert not (seed_config.parent / "full_ota_record.json").exists()


def test_bad_server_url_in_the_config_names_the_field(tmp_path):
    conf = write_config(tmp_path, server="http:///ota")  # passes the schema's ^https?:// but has no host
    proc = run_cli("partner-ota-hub-deploy", "-c", str(conf), "--list", env={"OTA_SERVER": ""})
    assert_one_line_error(proc, 2, f"{conf}: field 'server': 'http:///ota' is not a server URL: no host")


def test_a_password_in_the_url_is_refused_and_not_shown(seed_config):
    proc = run_cli("ota-build", "list", "-c", str(seed_config), env={"OTA_SERVER": "https://me:s3cret@ota.example.com"})
    assert_one_line_error(proc, 2, "OTA_SERVER: 'https://***@ota.example.com'", "user name or password")
    assert "s3cret" not in proc.stderr


@pytest.mark.parametrize("name,value", [("OTA_RETRIES", "-1"), ("OTA_RETRIES", "two"), ("OTA_READ_TIMEOUT", "0"),
                                        ("OTA_CONNECT_TIMEOUT", "nan")])
def test_bad_network_setting_is_one_line(seed_config, name, value):
    proc = run_cli("partner-ota-hub-deploy", "-c", str(seed_config), "--list",
                   env={"OTA_SERVER": "http://127.0.0.1:9", name: value})
    assert_one_line_error(proc, 2, f"{name}: {value!r} is not")


@pytest.mark.parametrize("tool", [["partner-ota-hub-uploader"], ["partner-ota-hub-deploy"], ["ota-build", "upload"],
                                  ["ota-build", "list"], ["ota-build", "deploy"], ["ota-build", "devices"]])
def test_help_documents_the_network_settings(tool):
    out = run_cli(*tool, "--help", check=0).stdout
    for name in ("OTA_SERVER", "OTA_CONNECT_TIMEOUT", "OTA_READ_TIMEOUT", "OTA_RETRIES"):
        assert name in out, (tool, name)
    hang = NetworkSettings().worst_case(NetworkSettings().read_timeout)
    assert "WARNING" in out and f"never answers fails a call after {hang:.0f} s" in out


def test_ids_that_are_not_a_url_path_segment_are_refused(tmp_path):
    conf = write_config(tmp_path, partnerId="../../x")
    proc = run_cli("partner-ota-hub-deploy", "-c", str(conf), "--list", env={"OTA_SERVER": "http://127.0.0.1:9"})
    assert_one_line_error(proc, 2, f"{conf}: field 'partnerId': '../../x' does not match")



def _self_signed(directory) -> Tuple[str, str]:  # noqa: ANN001
    """A self-signed certificate for 127.0.0.1 (nobody trusts it); paths of cert and key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_untrusted_certificate_is_one_line_and_not_retried(seed_config, tmp_path):
    import ssl

    cert, key = _self_signed(tmp_path)
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HtmlEverywhere)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    web.socket = context.wrap_socket(web.socket, server_side=True)
    handshakes: List[str] = []
    original = web.get_request

    def get_request():  # noqa: ANN202
        handshakes.append("x")
        return original()

    web.get_request = get_request  # type: ignore[method-assign]
    threading.Thread(target=web.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{web.server_address[1]}"
    try:
        proc = run_cli("partner-ota-hub-deploy", "-c", str(seed_config), "--list", cwd=tmp_path,
                       env={**FAST, "OTA_SERVER": url, "OTA_CREDENTIALS_FILE": "", "REQUESTS_CA_BUNDLE": "",
                            "CURL_CA_BUNDLE": ""}, timeout=60)
    finally:
        web.shutdown()
        web.server_close()
    assert_one_line_error(proc, 3, f"POST /oauth/token: TLS with {url} failed: certificate verify failed")
    assert len(handshakes) == 1
