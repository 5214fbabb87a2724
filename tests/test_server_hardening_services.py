"""Issue 11, server side, at the service layer and in-process: crash-safe completion (item 2), tmp sweep by
age (3), names anchored (4), offers never name a mismatching binary (5), the unknown user costs the same
(6), a full disk answers 507 (7), package zips checked (8), private data files (9)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import json
import os
import stat
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import sqlalchemy as sa

from ota_build.core.errors import UsageError
from ota_build.server import admin, auth, services
from ota_build.server.app import Settings, create_app
from ota_build.server.models import FirmwareImage, OtaRecord
from ota_build.server.services import Kind, RecordFields
from ota_build.server.storage import Storage

from .test_server_services import REPO, append, content, expect, image, store_image


class _Crash(BaseException):
    """A kill -9 at this point: nothing after it runs (no except/finally of the service catches it)."""


def _full_upload(db, storage: Storage, pk: int, tmp_path: Path, key: str, version_number: int) -> Tuple[str, str]:
    src, sha, size = image(tmp_path, key, version_number)
    with db.session() as s:
        sess = services.start_upload(s, storage, pk, size)
    append(storage, sess, 0, size - 1, Path(src).read_bytes())
    return sess.id, sha


def test_complete_survives_a_crash_at_any_point(env, tmp_path, keys, monkeypatch):
    """Item 2: killed while verifying, or after storing but before the session ended: the bytes are not lost,
    ``complete`` can be repeated and stores the binary."""
    db, storage, pk = env
    key = keys["ed25519"]["private"]
    upload_id, sha = _full_upload(db, storage, pk, tmp_path, key, 1)

    def crash_while_verifying(*args: Any, **kwargs: Any) -> None:
        raise _Crash()

    monkeypatch.setattr(services, "verify_image", crash_while_verifying)
    with db.session() as s, pytest.raises(_Crash):
        services.complete_upload(s, storage, pk, upload_id)
    monkeypatch.undo()
    assert services.upload_offset(storage, upload_id) == storage.part_path(upload_id).stat().st_size > 0
    storage.sweep_tmp(0)  # what the restart does
    with db.session() as s:
        assert services.complete_upload(s, storage, pk, upload_id) == sha
    assert storage.blob_path(sha).exists() and not storage.part_path(upload_id).exists()

    upload_id, sha = _full_upload(db, storage, pk, tmp_path, key, 2)
    monkeypatch.setattr(services, "_end_upload", crash_while_verifying)  # stored, session not ended yet
    with db.session() as s, pytest.raises(_Crash):
        services.complete_upload(s, storage, pk, upload_id)
    monkeypatch.undo()
    assert storage.blob_path(sha).exists()
    with db.session() as s:  # repeating it is harmless
        assert services.complete_upload(s, storage, pk, upload_id) == sha
        expect(Kind.NOT_FOUND, services.upload_session, s, pk, upload_id)
    assert not storage.part_path(upload_id).exists() and not list(storage.tmp_dir.iterdir())


def test_stale_tmp_files_are_swept_by_age(tmp_path):
    """Item 3: a worker removes tmp/upload-*.tmp untouched for TMP_MAX_AGE (at start and every SWEEP_INTERVAL)."""
    storage = Storage(str(tmp_path / "data"), 1000)
    old, fresh, other = (storage.tmp_dir / n for n in ("upload-old.tmp", "upload-new.tmp", "keep.txt"))
    for path in (old, fresh, other):
        path.write_bytes(b"x")
    past = time.time() - storage.tmp_max_age - 10
    os.utime(old, (past, past))
    storage._last_sweep = 0.0  # the sweep interval passed
    fd, made = storage.temp_file()
    os.close(fd)
    assert not old.exists() and fresh.exists() and other.exists() and Path(made).exists()
    assert storage.sweep_tmp(0) == 2 and other.exists()


@pytest.mark.parametrize("name", ["zpk\n", "zpk\r", "zpk/x", "../zpk", "zpk\x00"])
def test_package_names_are_checked_whole(env, name):
    """Item 4: ``zpk\\n`` was stored next to ``zpk`` ($ in re.match): refused, as every unsafe name."""
    db, storage, pk = env
    doc = json.loads(content("0" * 64))
    doc["package"] = name
    with db.session() as s:
        err = expect(Kind.INVALID, services.store_package, s, storage, json.dumps(doc), io.BytesIO(b"x"), False, pk)
    assert "package" in err.message
    assert not list((storage.root / "otafiles").iterdir())


def test_api_fields_are_checked_whole():
    """Item 4: the API's pydantic patterns (Rust regex: ``$`` is the end) refuse a trailing newline too."""
    from pydantic import ValidationError

    from ota_build.server.afero import PushIn, RecordIn

    assert RecordIn(name="fw", version="1.0").version == "1.0"
    for bad in ({"name": "fw", "version": "1.0\n"}, {"name": "fw\n", "version": "1.0"},
                {"name": "fw", "version": "1.0", "versionNumber": "7\n"}):
        with pytest.raises(ValidationError):
            RecordIn(**bad)
    with pytest.raises(ValidationError):
        PushIn(value="dev1\n")
    with pytest.raises(UsageError):
        admin._check_id("p1\n", "partnerId")


def test_repository_url_is_matched_whole():
    """Item 4: a URL with a trailing newline names no binary."""
    sha = "a" * 64
    assert services.sha_of_url(f"http://h/v1/ota/partners/p/repository/{sha}") == sha
    assert services.sha_of_url(f"http://h/v1/ota/partners/p/repository/{sha}\n") is None


def test_an_offer_never_names_a_mismatching_binary(env, tmp_path, keys):
    """Item 5: an image whose record was made to point at another versionNumber's binary is neither offered
    nor served (the database was changed behind the API's back, as a re-pointing did before)."""
    db, storage, pk = env
    key = keys["ed25519"]["private"]
    admin.add_device_type(db, "p1", "dt1")
    admin.device_token(db, "p1", "dt1", "dev1")
    sha1 = store_image(db, storage, pk, tmp_path, key, 1)
    sha5 = store_image(db, storage, pk, tmp_path, key, 5)
    with db.session() as s:
        dtype = services.find_device_type(s, pk, "dt1")
        for number, sha in ((1, sha1), (5, sha5)):
            services.create_record(s, pk, RecordFields("fw", 5, f"1.{number}", version_number=number,
                                                       url=REPO.format(pid="p1", sha=sha)))
        img1, _rec, _bin = services.associate(s, pk, dtype, 5, 1, "fw", "1.1")
        # re-pointing through the service is refused ...
        expect(Kind.CONFLICT, services.update_record, s, pk, 5, 1,
               RecordFields("fw", 5, "1.1", url=REPO.format(pid="p1", sha=sha5)))
        services.push(s, pk, dtype, img1.id, ["dev1"], None)
        dev = services.partner_devices(s, pk)[0][0]
        assert services.update_for(s, dev, 5, 0) is not None
        # ... and had it happened (an older server), the device is not offered the other binary
        rec5 = s.scalar(sa.select(OtaRecord).where(OtaRecord.version_number == 5))
        rec1 = s.scalar(sa.select(OtaRecord).where(OtaRecord.version_number == 1))
        rec1.binary_pk = rec5.binary_pk
        s.commit()
        assert services.update_for(s, dev, 5, 0) is None
        assert services.deployed_binary(s, dev, img1.id) is None
        assert s.scalar(sa.select(sa.func.count(FirmwareImage.id))) == 1


def test_unknown_user_costs_the_same_as_a_known_one(env, monkeypatch):
    """Item 6: a login checks two secrets whether the user exists or not (no timing oracle)."""
    db, _storage, _pk = env
    made = admin.create_partner(db, "known@example.com", partner_id="pk")
    client_id = made["partnerId"]  # the OAuth client id is the partnerId
    calls: List[str] = []
    real = auth.check_secret

    def counting(secret: str, stored: str) -> bool:
        calls.append(stored)
        return real(secret, stored)

    monkeypatch.setattr(auth, "check_secret", counting)
    with db.session() as s:
        assert services.issue_partner_token(s, "known@example.com", client_id, "bad", "bad") is None
        known = len(calls)
        calls.clear()
        assert services.issue_partner_token(s, "nobody@example.com", client_id, "bad", "bad") is None
        unknown = len(calls)
    assert known == unknown == 2


def _throttle_clock(monkeypatch, start: float) -> List[float]:
    now = [start]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    return now


def test_login_throttle_backs_off_and_forgets(monkeypatch):
    """Item 6: the back-off doubles past the free failures, is capped, and a success clears the account."""
    now = _throttle_clock(monkeypatch, 1000.0)
    throttle = auth.LoginThrottle(free_per_account=3, free_per_client=100, base=2, cap=60)
    keys = auth.login_keys("A@x", "1.2.3.4")
    assert keys == ("user:a@x", "ip:1.2.3.4")
    for _ in range(2):
        throttle.failed(keys)
    assert throttle.retry_after(keys) == 0
    throttle.failed(keys)
    assert throttle.retry_after(keys) == 2
    throttle.failed(keys)
    assert throttle.retry_after(keys) == 4
    for _ in range(10):
        throttle.failed(keys)
    assert throttle.retry_after(keys) == 60
    now[0] += 61
    assert throttle.retry_after(keys) == 0
    throttle.succeeded(keys[:1])
    assert throttle.retry_after(keys) == 0


# --------------------------------------------------------------------------- in-process HTTP (no client library)

def call(app: Any, method: str, path: str, headers: Optional[Dict[str, str]] = None,
         body: bytes = b"") -> Tuple[int, Dict[str, str], bytes]:
    """One request through the ASGI app: (status, headers, body)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in {**(headers or {}),
                                                                       "content-length": str(len(body))}.items()],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    sent = [False]
    out: Dict[str, Any] = {"body": b""}

    async def receive() -> Dict[str, Any]:
        if sent[0]:
            return {"type": "http.disconnect"}
        sent[0] = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            out["body"] += bytes(message.get("body", b""))

    asyncio.run(app(scope, receive, send))
    return out["status"], out["headers"], out["body"]


def test_a_full_disk_answers_507_in_the_api_shape(tmp_path, monkeypatch):
    """Item 7: ENOSPC while an upload is written is 507 with the JSON error body; nothing is left in tmp/."""
    app = create_app(Settings(data_dir=str(tmp_path / "data")))
    admin.create_partner(app.state.db, "full@example.com", partner_id="pf")
    token = admin.api_token(app.state.db, "pf")["token"]

    def no_space(self: Any, chunk: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("ota_build.server.storage._Sink.write", no_space)
    status, headers, body = call(app, "POST", "/v1/ota/partners/pf/binaries",
                                 {"authorization": f"Bearer {token}", "content-type": "application/octet-stream"},
                                 b"x" * 1000)
    assert status == 507 and headers["content-type"] == "application/json", body
    doc = json.loads(body)
    assert doc["status"] == 507 and doc["error"] == "Insufficient Storage" and "full" in doc["message"]
    assert "\n" not in doc["trace"]
    assert not list(app.state.storage.tmp_dir.iterdir())
    app.state.db.dispose()


def test_data_directory_files_are_private(env, tmp_path, keys):
    """Item 9: the data directory, its sub-directories, the database, blobs, packages and parts are 0700/0600."""
    db, storage, pk = env
    sha = store_image(db, storage, pk, tmp_path, keys["ed25519"]["private"], 1)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "a")
    data = buf.getvalue()
    with db.session() as s:
        services.store_package(s, storage, content(hashlib.sha256(data).hexdigest()), io.BytesIO(data), False, pk)
        sess = services.start_upload(s, storage, pk, 10)
    fd, tmp = storage.temp_file()
    os.close(fd)
    files = [storage.blob_path(sha), storage.root / "otafiles/app/main/app-main-1.0.0.zip",
             storage.part_path(sess.id), Path(tmp), storage.root / "ota.sqlite3"]
    dirs = [storage.root, storage.tmp_dir, storage.root / "blobs", storage.root / "otafiles/app/main"]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in dirs:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


def _zip(entries: List[Tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


@pytest.mark.parametrize("entries, why", [
    ([("../evil", b"x")], ".."), ([("a/../../evil", b"x")], ".."), ([("/etc/passwd", b"x")], "absolute"),
    ([("C:/x", b"x")], "absolute"), ([("a\\b", b"x")], "backslash"), ([], "no entries"),
    ([("bomb", b"\0" * (8 * 1024 * 1024))], "expands"),
])
def test_unsafe_package_zips_are_refused(env, entries, why):
    """Item 8: entries escaping the directory, a bare end-of-archive record and a zip bomb are refused at upload."""
    db, storage, pk = env
    data = _zip(entries) if entries else b"PK\x05\x06" + b"\0" * 18
    with db.session() as s:
        err = expect(Kind.INVALID, services.store_package, s, storage, content(hashlib.sha256(data).hexdigest()),
                     io.BytesIO(data), False, pk)
    assert "Zip Error" in err.message and why in err.message, err.message
    assert not list((storage.root / "otafiles").rglob("*.zip")) and not list(storage.tmp_dir.iterdir())
