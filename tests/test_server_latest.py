"""``/latestVersion``: version order in the database itself (SQLite and, when
OTA_TEST_DATABASE_URL is set, PostgreSQL with a language collation), the
per-process cache (LatestVersions) on a real database, and its invalidation
through a real upload on the live server."""

from __future__ import annotations

import json
import time
from typing import List

import pytest
import requests
from sqlalchemy import event

from ota_build.server.db import open_database
from ota_build.server.models import Package
from ota_build.server.packages import LatestVersions, latest_answer
from ota_build.server.services import version_key

from .serverutil import PG_URL, drop_pg_database
from .test_server_packages import a_zip, content_for, put

TRICKY = ["0.0.9", "0.0.10", "1.0-beta.2", "1.0-betan", "1.0-beta", "1.0", "1.0.0", "1.0-rc1", "10.0", "9.99.99",
          "2.0.0.20", "2.0.0.3"]


@pytest.fixture
def db(tmp_path):  # noqa: ANN001, ANN201
    database = open_database(str(tmp_path / "data"))
    queries: List[str] = []

    @event.listens_for(database.engine, "before_cursor_execute")
    def _count(conn, cursor, statement, *args):  # noqa: ANN001, ANN202
        if "FROM packages" in statement:
            queries.append(statement)

    database.queries = queries  # type: ignore[attr-defined]
    yield database
    database.dispose()


def language_collated_pg() -> str:
    """An empty PostgreSQL database with en_US.UTF-8 collation when the cluster has that locale."""
    import uuid

    import sqlalchemy as sa

    name = "ota_test_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        try:
            conn.execute(sa.text(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' "
                                 "LC_COLLATE 'en_US.utf8' LC_CTYPE 'en_US.utf8'"))
        except sa.exc.DBAPIError:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.engine.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_database_orders_like_version_key(backend, tmp_path):  # noqa: ANN001
    """The latest query's ORDER BY agrees with Python's byte order of version_key on every backend."""
    url = None
    if backend == "postgresql":
        if not PG_URL:
            pytest.skip("set OTA_TEST_DATABASE_URL to a PostgreSQL database")
        url = language_collated_pg()
    database = open_database(str(tmp_path / "data"), url)
    try:
        for version in TRICKY:
            add(database, "fw", version)
        with database.session() as s:
            got = [p.version for p in s.query(Package).filter_by(name="fw").order_by(Package.version_key)]
        assert got == sorted(TRICKY, key=version_key)
        assert version_of(LatestVersions(database, ttl=0), "fw") == "10.0"
        if url:  # the hot-read pool may run on the event loop: its statements are bounded
            with database.reader.connect() as conn:
                assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "2s"
    finally:
        database.dispose()
        if url:
            drop_pg_database(url)


def add(db, name: str, version: str, branch: str = "main") -> None:  # noqa: ANN001
    with db.session() as s:
        s.add(Package(name=name, branch=branch, version=version, version_key=version_key(version),
                      content=json.dumps({"version": version}), sha256="0" * 64, size=1))
        s.commit()


def answer(latest: LatestVersions, name: str, branch: str = "main"):  # noqa: ANN201
    return latest_answer(latest, name, branch)


def version_of(latest: LatestVersions, name: str, branch: str = "main") -> str:
    status, doc = answer(latest, name, branch)
    assert status == 200, doc
    return json.loads(doc["content.json"])["version"]


def test_hits_do_not_query_and_invalidate_refreshes(db):  # noqa: ANN001
    add(db, "fw", "0.0.9")
    latest = LatestVersions(db, ttl=60)
    assert version_of(latest, "fw") == "0.0.9"
    for _ in range(50):
        assert version_of(latest, "fw") == "0.0.9"
    assert len(db.queries) == 1
    add(db, "fw", "0.0.10")
    assert version_of(latest, "fw") == "0.0.9"  # another worker's upload: seen after the TTL
    latest.invalidate("fw", "main")  # this worker's upload: seen at once
    assert version_of(latest, "fw") == "0.0.10"
    assert len(db.queries) == 2


def test_ttl_expires_and_zero_disables(db):  # noqa: ANN001
    add(db, "fw", "1.0")
    short = LatestVersions(db, ttl=0.05)
    assert version_of(short, "fw") == "1.0"
    add(db, "fw", "1.1")
    time.sleep(0.1)
    assert version_of(short, "fw") == "1.1"
    off = LatestVersions(db, ttl=0)
    before = len(db.queries)
    for _ in range(5):
        version_of(off, "fw")
    assert len(db.queries) == before + 5


def test_missing_is_cached_until_invalidated_and_size_is_bounded(db):  # noqa: ANN001
    latest = LatestVersions(db, ttl=60, max_entries=8)
    assert answer(latest, "new")[0] == 404
    add(db, "new", "0.1")
    assert answer(latest, "new")[0] == 404
    latest.invalidate("new", "main")
    assert version_of(latest, "new") == "0.1"
    for i in range(100):  # random names cannot grow the cache
        assert answer(latest, f"junk{i}")[0] == 404
    assert len(latest._entries) == 8


def test_a_miss_racing_an_invalidation_is_not_kept(db):  # noqa: ANN001
    add(db, "fw", "1.0")
    latest = LatestVersions(db, ttl=60)
    real = db.reader.connect

    def connect_then_upload():  # noqa: ANN202
        conn = real()
        # the upload commits and invalidates while this miss is in flight
        latest.invalidate("fw", "main")
        return conn

    db.reader.connect = connect_then_upload  # type: ignore[method-assign]
    try:
        version_of(latest, "fw")
    finally:
        db.reader.connect = real  # type: ignore[method-assign]
    assert ("fw", "main") not in latest._entries


def test_upload_is_seen_at_once_by_the_server(server, partner):  # noqa: ANN001
    token = partner.api_token()
    pkg = "cache" + partner.partner_id[-6:]

    def latest() -> str:
        resp = requests.get(f"{server.url}/latestVersion", params={"package": pkg, "branch": "main"})
        return json.loads(resp.json()["content.json"])["version"] if resp.status_code == 200 else str(resp.status_code)

    assert latest() == "404"
    for version in ("0.0.9", "0.0.10", "0.1.0"):
        data = a_zip(version)
        assert put(server, token, data, content_for(data, pkg, "main", version)).status_code == 200
        assert latest() == version  # no stale answer after an upload through this server
    data = a_zip("again")
    resp = put(server, token, data, content_for(data, pkg, "main", "0.1.0"), "?force=1")
    assert resp.status_code == 200
    assert requests.get(f"{server.url}/latestVersion", params={"package": pkg, "branch": "main"}).json()[
        "content.json"] == json.dumps(content_for(data, pkg, "main", "0.1.0"))


def test_several_workers_agree_within_the_ttl(tmp_path):  # noqa: ANN001
    """--workers 2: every worker answers the new version once the TTL has passed."""
    from .serverutil import start_server, stop_server

    srv = start_server(tmp_path / "data", None, extra=["--workers", "2", "--latest-cache-ttl", "0.5"])
    try:
        token = srv.admin("api-token", "--partner", srv.admin("partner", "--username", "w@example.com",
                                                               "--partner-id", "workers")["partnerId"])["token"]
        def versions(n: int) -> set:
            seen = set()
            for _ in range(n):  # a new connection each time, so both workers answer
                resp = requests.get(f"{srv.url}/latestVersion", params={"package": "multi", "branch": "main"},
                                    headers={"Connection": "close"})
                seen.add(json.loads(resp.json()["content.json"])["version"] if resp.status_code == 200 else "-")
            return seen

        data = a_zip("1")
        assert put(srv, token, data, content_for(data, "multi", "main", "1.0")).status_code == 200
        assert versions(40) == {"1.0"}  # both workers now hold 1.0
        data = a_zip("2")
        assert put(srv, token, data, content_for(data, "multi", "main", "1.1")).status_code == 200
        time.sleep(0.6)
        assert versions(40) == {"1.1"}
    finally:
        stop_server(srv)
