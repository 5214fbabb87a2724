"""Issue 11, server side, over a real ``ota-build serve``: bodies refused before they are read (item 1),
stale temporary files swept at start-up (3), associated images immutable (5), login back-off (6),
``trace`` in error bodies (16), every image in one page without ``page``/``size`` (17).

Item 1 is measured on the server process itself: its resident memory (``VmRSS`` of
/proc/<pid>/status) around a body declared as 1 GiB, sent in 1 MiB chunks only for as long as the
server has not answered, and at most ``SEND_BOUND`` bytes (so a server that reads everything fails
the test quickly instead of making the machine swap)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import select
import signal
import socket
import time
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import requests

from .serverutil import Server, start_server, stop_server
from .test_server_afero import api, bearer, create_record, make_image, publish

log = logging.getLogger(__name__)

GIB = 1024 ** 3
MIB = 1024 ** 2
SEND_BOUND = 96 * MIB  # a guarded server answers long before; an unguarded one has read this much by then


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def send_big_body(srv: Server, method: str, path: str, headers: Dict[str, str], declared: Optional[int],
                  bound: int = SEND_BOUND, head: bytes = b"") -> Tuple[Optional[int], int, bytes]:
    """Send a request whose body is ``declared`` bytes (chunked when None), 1 MiB at a time, until the
    server answers or ``bound`` bytes went out, after ``head`` (the body's first bytes, e.g. a form field):
    (status or None, bytes sent, the answer)."""
    host, port = srv.url.rsplit("//", 1)[1].split(":")
    head_text = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    head_text += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head_text += f"Content-Length: {declared}\r\n" if declared is not None else "Transfer-Encoding: chunked\r\n"
    chunk = b"\0" * MIB
    sent = 0
    answer = b""
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall((head_text + "\r\n").encode() + head)
        deadline = time.monotonic() + 120
        try:
            while sent < bound and time.monotonic() < deadline:
                if select.select([sock], [], [], 0.2 if sent == 0 else 0)[0]:
                    break  # the server answered
                body = chunk if declared is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk)
                sock.sendall(body)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(30)
        try:
            while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + _length(answer):
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except (ConnectionResetError, socket.timeout):
            pass
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None
    return status, sent, answer


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def _json_of(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def test_bodies_are_refused_before_they_are_read(tmp_path):
    """Item 1: no token, or a declared length over the endpoint's limit, is answered before any body byte is
    read; an undeclared body is cut off at the limit; the server's memory stays flat; nothing is left behind."""
    srv = start_server(tmp_path / "data", None, extra=["--max-upload-bytes", "5000000"])
    try:
        pid = "p-guard"
        srv.admin("partner", "--username", "guard@example.com", "--partner-id", pid)
        token = srv.admin("api-token", "--partner", pid)["token"]
        before = rss_kib(srv.proc.pid)
        # the case: an unauthenticated 1 GiB JSON body to the pool
        status, sent, answer = send_big_body(srv, "POST", f"/v1/ota/partners/{pid}/pool",
                                             {"Content-Type": "application/json"}, GIB)
        assert status == 401 and sent < SEND_BOUND, (status, sent)
        assert "trace" in _json_of(answer)
        # a wrong token, and the multipart uploads (spooled before the 401 until now)
        status, sent, _ = send_big_body(srv, "POST", f"/v1/ota/partners/{pid}/pool",
                                        {"Authorization": "Bearer nope", "Content-Type": "application/json"}, GIB)
        assert status == 401 and sent < SEND_BOUND
        status, sent, _ = send_big_body(srv, "PUT", "/upload",
                                        {"Content-Type": "multipart/form-data; boundary=xyz"}, GIB)
        assert status == 401 and sent < SEND_BOUND
        # authenticated, but a declared length over the endpoint's limit: 413 at once
        auth = {"Authorization": f"Bearer {token}"}
        for path, ctype in ((f"/v1/ota/partners/{pid}/pool", "application/json"),
                            (f"/v1/ota/partners/{pid}/binaries", "application/octet-stream"),
                            ("/upload", "multipart/form-data; boundary=xyz"),
                            ("/oauth/token", "application/x-www-form-urlencoded"),
                            ("/web/upload", "multipart/form-data; boundary=xyz")):
            status, sent, _ = send_big_body(srv, "PUT" if path == "/upload" else "POST", path,
                                            {**auth, "Content-Type": ctype}, GIB)
            assert status == 413 and sent < SEND_BOUND, (path, status, sent)
        # undeclared (chunked): cut off once past the limit (JSON: 2 MiB; an image: --max-upload-bytes)
        status, sent, _ = send_big_body(srv, "POST", f"/v1/ota/partners/{pid}/pool",
                                        {**auth, "Content-Type": "application/json"}, None)
        assert status == 413 and sent < SEND_BOUND, (status, sent)
        status, sent, _ = send_big_body(srv, "POST", f"/v1/ota/partners/{pid}/binaries",
                                        {**auth, "Content-Type": "application/octet-stream"}, None)
        assert status == 413 and sent < SEND_BOUND, (status, sent)
        after = rss_kib(srv.proc.pid)
        log.warning("server RSS before %d KiB, after the 1 GiB bodies %d KiB", before, after)
        assert after - before < 50 * 1024, (before, after)
        time.sleep(0.5)
        left = [p for p in (tmp_path / "data").rglob("*") if p.is_file() and not p.name.startswith("ota.sqlite3")]
        assert left == [], left
        # the API still works
        resp = requests.post(f"{srv.url}/v1/ota/partners/{pid}/pool", headers=auth, timeout=30,
                             json={"name": "n", "type": 5, "version": "1.0"})
        assert resp.status_code == 201, resp.text
    finally:
        stop_server(srv)


def test_multipart_files_are_spooled_into_the_data_directory(tmp_path):
    """Item 1: a multipart file past the in-memory spool (1 MiB) goes to <data>/tmp, never the system /tmp."""
    srv = start_server(tmp_path / "data", None)
    try:
        srv.admin("partner", "--username", "spool@example.com", "--partner-id", "p-spool")
        token = srv.admin("api-token", "--partner", "p-spool")["token"]
        host, port = srv.url.rsplit("//", 1)[1].split(":")
        body_head = (f"--xyz\r\nContent-Disposition: form-data; name=\"token\"\r\n\r\n{token}\r\n"
                     "--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.zip\"\r\n"
                     "Content-Type: application/zip\r\n\r\n").encode()
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall((f"POST /web/upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {4 * MIB}\r\n"
                          "Content-Type: multipart/form-data; boundary=xyz\r\n\r\n").encode() + body_head)
            for _ in range(3):
                sock.sendall(b"\1" * MIB)
            spooled = []
            for _ in range(100):
                links = []
                for fd in Path(f"/proc/{srv.proc.pid}/fd").iterdir():
                    try:
                        links.append(os.readlink(fd))
                    except OSError:
                        continue
                spooled = [link for link in links if link.endswith("(deleted)")]  # unnamed: a spooled upload
                if spooled:
                    break
                time.sleep(0.05)
        assert spooled, "the multipart file was not spooled to disk"
        assert all(link.startswith(str((tmp_path / "data" / "tmp").resolve())) for link in spooled), spooled
    finally:
        stop_server(srv)


def test_web_form_token_is_checked_before_the_file(partner, tmp_path):
    """Item 1: the web form's token (its first field) is checked before its file is read: a wrong one is sent
    back to the page at once; a right one stores the package as before."""
    p = partner
    srv = p.server
    boundary = "b0undary"
    head = f"--{boundary}\r\nContent-Disposition: form-data; name=\"token\"\r\n\r\nwrong\r\n--{boundary}\r\n"
    status, sent, answer = send_big_body(srv, "POST", "/web/upload",
                                         {"Content-Type": f"multipart/form-data; boundary={boundary}",
                                          }, 3 * GIB, head=head.encode())
    assert status == 303 and sent < SEND_BOUND, (status, sent)
    assert b"location: /?error=a%20valid%20partner%20token" in answer.lower()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "hello")
    form = {"token": p.api_token(), "package": f"web{p.partner_id[2:]}", "branch": "main", "version": "1.0.0"}
    resp = requests.post(srv.url + "/web/upload", data=form, files={"file": ("a.zip", buf.getvalue())},
                         allow_redirects=False, timeout=60)
    assert resp.status_code == 303 and "message=stored" in resp.headers["location"], resp.headers
    # the token must come first: a form that sends the file first is refused without reading it
    resp = requests.post(srv.url + "/web/upload", files={"file": ("a.zip", buf.getvalue()), "token": (None, "x")},
                         allow_redirects=False, timeout=60)
    assert resp.status_code == 303 and "error=" in resp.headers["location"]


def test_stale_temporary_files_are_removed_at_start(tmp_path):
    """Item 3: upload-*.tmp files left in tmp/ by a killed server are removed when it starts again."""
    data = tmp_path / "data"
    (data / "tmp").mkdir(parents=True)
    stale = data / "tmp" / "upload-killed.tmp"
    stale.write_bytes(b"x" * 1000)
    srv = start_server(data, None)
    try:
        assert not stale.exists()
    finally:
        stop_server(srv)


def test_associated_image_cannot_be_repointed(partner, keys):
    """Item 5: once associated, PUT of the record with another binary's url is 409, and the offer is unchanged."""
    p = partner
    token = p.api_token()
    key = keys["ed25519"]["private"]
    first = publish(p, token, "1.0.1", key)
    second = publish(p, token, "1.0.2", key)
    rec = requests.get(api(p) + f"/deviceTypes/{p.device_type}/firmwareImages/types/5/versionNumbers/"
                       f"{first['versionNumber']}", headers=bearer(token)).json()
    other_url = f"{p.server.url}/v1/ota/partners/{p.partner_id}/repository/{second['sha256']}"
    body = {"name": rec["name"], "version": rec["version"], "type": 5, "url": other_url, "description": "x"}
    resp = requests.put(api(p) + f"/pool/types/5/versionNumbers/{first['versionNumber']}", headers=bearer(token),
                        json=body)
    assert resp.status_code == 409, resp.text
    assert "url" in resp.json()["message"]
    same_url = f"{p.server.url}/v1/ota/partners/{p.partner_id}/repository/{first['sha256']}"
    resp = requests.put(api(p) + f"/pool/types/5/versionNumbers/{first['versionNumber']}", headers=bearer(token),
                        json={**body, "url": same_url, "description": "new words"})
    assert resp.status_code == 204, resp.text  # description and tags may change
    images = requests.get(api(p) + f"/deviceTypes/{p.device_type}/firmwareImages/types/5",
                          headers=bearer(token)).json()["content"]
    assert {img["versionNumber"]: img["sha256"] for img in images} == {
        first["versionNumber"]: first["sha256"], second["versionNumber"]: second["sha256"]}


def test_login_back_off(tmp_path):
    """Item 6: wrong passwords for one account are answered 429 with Retry-After after a few; so are many
    failures from one client across accounts; the right password works again after the wait."""
    srv = start_server(tmp_path / "data", None)
    try:
        sec = srv.admin("partner", "--username", "bo@example.com", "--partner-id", "p-bo")

        def login(username: str, password: str) -> requests.Response:
            return requests.post(srv.url + "/oauth/token", headers={"Authorization": "Basic " + sec["auth-string"]},
                                 data={"username": username, "password": password, "grant_type": "password"},
                                 timeout=60)

        codes = [login("bo@example.com", "wrong").status_code for _ in range(5)]
        assert codes == [401] * 5, codes
        resp = login("bo@example.com", sec["userpw"])  # even the right password waits now
        assert resp.status_code == 429, resp.text
        wait = int(resp.headers["Retry-After"])
        assert 1 <= wait <= 300
        assert "trace" in resp.json()
        time.sleep(wait + 0.2)
        assert login("bo@example.com", sec["userpw"]).status_code == 200
        # per client: failures spread over many (unknown) accounts; the 5 above count too (30 are free)
        codes = [login(f"nobody{i}@example.com", "x").status_code for i in range(27)]
        assert codes[:25] == [401] * 25 and codes[25:] == [429, 429], codes
    finally:
        stop_server(srv)


def test_error_bodies_carry_a_one_line_trace(partner):
    """Item 16: the original tools print only ``trace``: every error body has it, one line, no stack trace."""
    p = partner
    token = p.api_token()
    answers = [
        requests.get(api(p) + f"/deviceTypes/{p.device_type}/firmwareImages/types/5/versionNumbers/999",
                     headers=bearer(token)),
        requests.post(api(p) + "/pool", headers=bearer(token), json={"name": "x"}),
        requests.get(api(p) + "/devices"),
        requests.post(p.server.url + "/oauth/token", data={"username": "u", "password": "p", "grant_type": "password"}),
        requests.put(api(p) + "/pool/types/5/versionNumbers/77", headers=bearer(token),
                     json={"name": "x", "version": "1.0"}),
    ]
    for resp in answers:
        doc = resp.json()
        assert resp.status_code >= 400 and {"status", "error", "message", "trace"} <= set(doc), (resp.status_code, doc)
        assert "\n" not in doc["trace"] and "Traceback" not in doc["trace"] and doc["message"] in doc["trace"]


def test_list_without_paging_has_every_image(partner, keys):
    """Item 17: without page/size every image is in the first page (the original --list reads only it)."""
    p = partner
    token = p.api_token()
    key = keys["ed25519"]["private"]
    for i in range(22):
        rec = create_record(p, token, f"2.0.{i}", name="many")
        image = make_image(p.dir, int(rec["versionNumber"]), key, size=1000, name=f"m{i}.bin")
        sha = requests.post(api(p) + "/binaries", headers={**bearer(token), "Content-Type": "application/octet-stream"},
                            data=image.read_bytes()).json()["value"]
        rec["url"] = requests.post(api(p) + "/binaries/moveToRepository", headers=bearer(token),
                                   json={"value": sha}).json()["value"]
        assert requests.put(api(p) + f"/pool/types/5/versionNumbers/{rec['versionNumber']}", headers=bearer(token),
                            json=rec).status_code == 204
        assert requests.post(api(p) + f"/deviceTypes/{p.device_type}/firmwareImages", headers=bearer(token),
                             json=rec).status_code == 201
    url = api(p) + f"/deviceTypes/{p.device_type}/firmwareImages/types/5"
    page = requests.get(url, headers=bearer(token)).json()
    assert page["totalElements"] == 22 and len(page["content"]) == 22 and page["totalPages"] == 1
    paged = requests.get(url, params={"page": 0}, headers=bearer(token)).json()
    assert len(paged["content"]) == 20 and paged["totalPages"] == 2  # explicit paging is unchanged


def test_kill_9_during_complete_loses_nothing(tmp_path, keys):
    """Item 2 with a real server: killed (SIGKILL) while ``complete`` verifies a 30 MB upload, then started
    again: either the binary is stored, or the session still has every byte and ``complete`` works.
    (The deterministic crash points are in test_server_hardening_services.py.)"""
    data = tmp_path / "data"
    srv = start_server(data, None)
    pid = "p-kill"
    srv.admin("partner", "--username", "kill@example.com", "--partner-id", pid)
    token = srv.admin("api-token", "--partner", pid)["token"]
    image = make_image(tmp_path, 1, keys["ed25519"]["private"], size=30_000_000).read_bytes()
    base = f"/v1/ota/partners/{pid}/binaries/uploads"
    try:
        upload_id = requests.post(srv.url + base, headers=bearer(token), json={"size": len(image)}).json()["uploadId"]
        resp = requests.put(f"{srv.url}{base}/{upload_id}", data=image, timeout=120,
                            headers={**bearer(token), "Content-Range": f"bytes 0-{len(image) - 1}/{len(image)}"})
        assert resp.json()["offset"] == len(image)
        host, port = srv.url.rsplit("//", 1)[1].split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall((f"POST {base}/{upload_id}/complete HTTP/1.1\r\nHost: {host}\r\n"
                          f"Authorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n").encode())
            time.sleep(0.1)
            os.killpg(srv.proc.pid, signal.SIGKILL)
            srv.proc.wait()
    finally:
        if srv.proc.poll() is None:
            stop_server(srv)
    srv = start_server(data, None)
    try:
        sha = hashlib.sha256(image).hexdigest()
        status = requests.get(f"{srv.url}{base}/{upload_id}", headers=bearer(token), timeout=30)
        if status.status_code == 200:  # killed before the binary was stored: every byte is still there
            assert status.json()["offset"] == len(image)
            resp = requests.post(f"{srv.url}{base}/{upload_id}/complete", headers=bearer(token), timeout=120)
            assert resp.status_code == 200 and resp.json()["value"] == sha, resp.text
        else:
            assert status.status_code == 404
        resp = requests.post(f"{srv.url}/v1/ota/partners/{pid}/binaries/moveToRepository", headers=bearer(token),
                             json={"value": sha}, timeout=30)
        assert resp.status_code == 200, resp.text
        assert (data / "blobs" / sha).stat().st_size == len(image)
        assert not list((data / "tmp").iterdir())
    finally:
        stop_server(srv)
