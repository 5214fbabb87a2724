"""The server's upload size limit: a bigger upload is refused and leaves nothing behind."""

from __future__ import annotations

import os

import requests

from .serverutil import start_server, stop_server


def test_upload_over_the_limit_is_refused(tmp_path):
    srv = start_server(tmp_path / "data", None, extra=["--max-upload-bytes", "4096"])
    try:
        pid = "p-limits"
        secrets = srv.admin("partner", "--username", "limits@example.com", "--partner-id", pid)
        token = srv.admin("api-token", "--partner", pid)["token"]
        resp = requests.post(f"{srv.url}/v1/ota/partners/{pid}/binaries", data=os.urandom(10_000),
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
                             timeout=30)
        assert resp.status_code == 413, resp.text
        leftovers = [p for p in (tmp_path / "data").rglob("*") if p.is_file() and not p.name.startswith("ota.sqlite3")]
        assert leftovers == [], leftovers
        assert secrets["userpw"] not in resp.text
    finally:
        stop_server(srv)


def test_unfinished_resumable_uploads_are_capped_and_expire(tmp_path):
    """At most MAX_OPEN_UPLOADS unfinished sessions per partner; expired ones (and their .part files) are dropped;
    a completed or rejected session no longer counts."""
    import datetime as dt

    from sqlalchemy import update

    from ota_build.server.services import MAX_OPEN_UPLOADS, UPLOAD_SESSION_HOURS
    from ota_build.server.db import open_database
    from ota_build.server.models import UploadSession

    srv = start_server(tmp_path / "data", None)
    try:
        pid = "p-sessions"
        srv.admin("partner", "--username", "sessions@example.com", "--partner-id", pid)
        auth = {"Authorization": f"Bearer {srv.admin('api-token', '--partner', pid)['token']}"}
        base = f"{srv.url}/v1/ota/partners/{pid}/binaries/uploads"

        def start(size: int = 1000) -> requests.Response:
            return requests.post(base, json={"size": size}, headers=auth, timeout=30)

        # a session whose bytes are not an image is rejected at completion, and is then gone
        bad = start(10).json()["uploadId"]
        put = requests.put(f"{base}/{bad}", data=b"0123456789", headers={**auth, "Content-Range": "bytes 0-9/10"},
                           timeout=30)
        assert put.status_code == 200, put.text
        assert requests.post(f"{base}/{bad}/complete", headers=auth, timeout=30).status_code == 400
        assert requests.get(f"{base}/{bad}", headers=auth, timeout=30).status_code == 404

        ids = [start().json()["uploadId"] for _ in range(MAX_OPEN_UPLOADS)]
        refused = start()
        assert refused.status_code == 429 and "unfinished uploads" in refused.json()["message"]
        parts = tmp_path / "data" / "uploads"
        assert len(list(parts.glob("*.part"))) == MAX_OPEN_UPLOADS

        db = open_database(str(tmp_path / "data"), run_migrations=False)
        with db.session() as s:  # the first half is older than the expiry
            s.execute(update(UploadSession).where(UploadSession.id.in_(ids[: MAX_OPEN_UPLOADS // 2]))
                      .values(created=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=UPLOAD_SESSION_HOURS + 1)))
            s.commit()
        db.dispose()
        assert start().status_code == 201
        assert len(list(parts.glob("*.part"))) == MAX_OPEN_UPLOADS // 2 + 1
        for gone in ids[: MAX_OPEN_UPLOADS // 2]:
            assert requests.get(f"{base}/{gone}", headers=auth, timeout=30).status_code == 404
        assert requests.get(f"{base}/{ids[-1]}", headers=auth, timeout=30).status_code == 200
    finally:
        stop_server(srv)
