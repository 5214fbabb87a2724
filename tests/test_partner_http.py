"""The partner transport (``ota_build.partner.http``): one retry policy on urllib3's ``Retry``.

Against real loopback servers (``http.server`` in a thread) that answer from a script: what is retried,
how often, how long it waits, what each retry logs, and where the Authorization header goes.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from ota_build.core.config import NetworkSettings
from ota_build.core.errors import ServerError
from ota_build.partner.http import OtaSession
from ota_build.partner.pack import upload_package

FAST = NetworkSettings(connect_timeout=1, read_timeout=1, retries=2, backoff=0.01)
Answer = Tuple[int, Dict[str, str], bytes]


class Scripted:
    """An HTTP server on 127.0.0.1 that answers each request with the next answer of ``script`` (then 200 ``{}``).

    An answer of status 0 closes the connection without answering (the request arrived; its answer is lost).
    Every request is recorded as ``(method, path, headers)``."""

    def __init__(self, script: Optional[List[Answer]] = None) -> None:
        self.script = list(script or [])
        self.seen: List[Tuple[str, str, Dict[str, str]]] = []
        me = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                me.seen.append((self.command, self.path, dict(self.headers.items())))
                status, headers, body = me.script.pop(0) if me.script else (200, {}, b"{}")
                if status == 0:
                    self.close_connection = True
                    return
                self.send_response(status)
                headers = {"Content-Type": "application/json", **headers}
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self._thread.join()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator:
    made: List[Scripted] = []

    def make(*script: Answer) -> Scripted:
        made.append(Scripted(list(script)))
        return made[-1]

    yield make
    for srv in made:
        srv.close()


def unavailable(**headers: str) -> Answer:
    return (503, headers, b'{"message": "busy"}')


def retry_lines(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_get_is_retried_on_503_then_succeeds(scripted, caplog):
    srv = scripted(unavailable(), (502, {}, b"{}"), (200, {}, b'{"value": 1}'))
    with caplog.at_level(logging.WARNING):
        resp = OtaSession(srv.url, FAST).call("GET", "/v1/thing")
    assert resp.status_code == 200 and resp.json() == {"value": 1}
    assert [s[:2] for s in srv.seen] == [("GET", "/v1/thing")] * 3
    assert retry_lines(caplog) == [f"GET /v1/thing: HTTP 503 from {srv.url}; retry 1 of 2 in 0.01 s",
                                   f"GET /v1/thing: HTTP 502 from {srv.url}; retry 2 of 2 in 0.02 s"]


def test_the_last_answer_is_returned_when_retries_run_out(scripted, caplog):
    srv = scripted(unavailable(), unavailable(), unavailable(), (200, {}, b"{}"))
    with caplog.at_level(logging.WARNING):
        resp = OtaSession(srv.url, FAST).call("GET", "/v1/thing")
    assert resp.status_code == 503 and len(srv.seen) == 3 and len(retry_lines(caplog)) == 2


def test_post_is_not_retried_on_503(scripted, caplog):
    srv = scripted(unavailable(), (201, {}, b"{}"))
    with caplog.at_level(logging.WARNING):
        resp = OtaSession(srv.url, FAST).call("POST", "/v1/pool", json={"name": "x"})
    assert resp.status_code == 503 and len(srv.seen) == 1 and retry_lines(caplog) == []


def test_post_marked_safe_is_retried(scripted):
    srv = scripted(unavailable(), (200, {}, b"{}"))
    resp = OtaSession(srv.url, FAST).call("POST", "/oauth/token", retry_safe=True, data={"grant_type": "password"})
    assert resp.status_code == 200 and [s[0] for s in srv.seen] == ["POST", "POST"]


def test_post_whose_answer_is_lost_is_not_sent_again(scripted, caplog):
    srv = scripted((0, {}, b""), (201, {}, b"{}"))
    with caplog.at_level(logging.WARNING):
        with pytest.raises(ServerError) as exc:
            OtaSession(srv.url, FAST).call("POST", "/v1/pool", json={"name": "x"})
    assert str(exc.value) == (f"POST /v1/pool: the connection to {srv.url} was lost; not retried, as the server may "
                              "have carried it out")
    assert len(srv.seen) == 1 and retry_lines(caplog) == []


def test_get_whose_answer_is_lost_is_retried(scripted, caplog):
    srv = scripted((0, {}, b""), (200, {}, b"{}"))
    with caplog.at_level(logging.WARNING):
        assert OtaSession(srv.url, FAST).call("GET", "/v1/thing").status_code == 200
    assert len(srv.seen) == 2
    assert retry_lines(caplog) == [f"GET /v1/thing: the connection to {srv.url} was lost; retry 1 of 2 in 0.01 s"]


def test_no_transport_retries_when_the_caller_resumes(scripted, caplog):
    srv = scripted(unavailable(), (200, {}, b"{}"))
    session = OtaSession(srv.url, FAST)
    with caplog.at_level(logging.WARNING):
        resp = session.put(session.url("/v1/uploads/1"), data=b"chunk", retries=0)
    assert resp.status_code == 503 and len(srv.seen) == 1 and retry_lines(caplog) == []


def test_retry_after_is_honoured(scripted, caplog):
    srv = scripted(unavailable(**{"Retry-After": "1"}), (200, {}, b"{}"))
    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert OtaSession(srv.url, FAST).call("GET", "/v1/thing").status_code == 200
    assert 0.9 <= time.monotonic() - start < 5
    assert retry_lines(caplog) == [f"GET /v1/thing: HTTP 503 from {srv.url}; retry 1 of 2 in 1 s"]


def test_retry_after_is_bounded(scripted, caplog):
    srv = scripted(unavailable(**{"Retry-After": "3600"}), (200, {}, b"{}"))
    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert OtaSession(srv.url, FAST, max_retry_after=0.2).call("GET", "/v1/thing").status_code == 200
    assert time.monotonic() - start < 3
    assert retry_lines(caplog) == [f"GET /v1/thing: HTTP 503 from {srv.url}; retry 1 of 2 in 0.2 s"]


def test_retry_after_alone_does_not_make_a_429_retried(scripted):
    srv = scripted((429, {"Retry-After": "1"}, b"{}"), (200, {}, b"{}"))
    assert OtaSession(srv.url, FAST).call("GET", "/v1/thing").status_code == 429 and len(srv.seen) == 1


def test_authorization_is_not_sent_to_another_origin_on_redirect(scripted):
    other = scripted()
    srv = scripted((302, {"Location": f"{other.url}/elsewhere"}, b""))
    resp = OtaSession(srv.url, FAST).call("GET", "/v1/thing", headers={"Authorization": "Bearer s3cret"})
    assert resp.status_code == 200
    assert srv.seen[0][2].get("Authorization") == "Bearer s3cret"
    assert other.seen[0][1] == "/elsewhere" and "Authorization" not in other.seen[0][2]


def test_authorization_stays_on_a_redirect_within_the_origin(scripted):
    srv = scripted((302, {"Location": "/v1/moved"}, b""))
    OtaSession(srv.url, FAST).call("GET", "/v1/thing", headers={"Authorization": "Bearer s3cret"})
    assert [s[1] for s in srv.seen] == ["/v1/thing", "/v1/moved"]
    assert srv.seen[1][2].get("Authorization") == "Bearer s3cret"


def test_timeouts_and_user_agent(scripted):
    srv = scripted()
    session = OtaSession(srv.url, NetworkSettings(connect_timeout=4, read_timeout=7))
    assert session.timeout() == (4, 7) and session.timeout(3) == (4, 10)
    session.call("GET", "/v1/thing")
    assert srv.seen[0][2]["User-Agent"].startswith("ota-build/")


@pytest.mark.parametrize("overwrite,attempts", [(True, 2), (False, 1)])
def test_pack_upload_is_retried_only_when_it_replaces(scripted, tmp_path, overwrite, attempts):
    srv = scripted(unavailable(), (200, {}, json.dumps({"status": 200, "url": "/x.zip"}).encode()))
    zip_path = tmp_path / "p-main-1.zip"
    zip_path.write_bytes(b"PK\x05\x06" + bytes(18))
    if overwrite:
        assert upload_package(srv.url, "tok", str(zip_path), {"package": "p"}, True, FAST)["url"] == "/x.zip"
    else:
        with pytest.raises(ServerError, match="PUT /upload: HTTP 503: busy"):
            upload_package(srv.url, "tok", str(zip_path), {"package": "p"}, False, FAST)
    assert [s[:2] for s in srv.seen] == [("PUT", "/upload" + ("?overwrite=1" if overwrite else ""))] * attempts
