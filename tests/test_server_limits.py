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
