"""Fixtures for the server tests: a real ``ota-build serve`` on 127.0.0.1, over
SQLite, and over PostgreSQL too when ``OTA_TEST_DATABASE_URL`` names a server
(``.ci/run`` starts one). conftest.py registers this module as a plugin, so
the fixtures are available to every test module.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
import requests

from .conftest import SEED_CONFIG, script

_ADMIN_LOCK = threading.Lock()  # redirect_stdout is process-wide

PG_URL = os.environ.get("OTA_TEST_DATABASE_URL", "")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])

__all__ = ["server", "partner", "Server", "Partner", "BACKENDS", "free_port", "free_udp_port", "start_server"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_udp_port() -> int:
    """A UDP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fresh_pg_database() -> str:
    """Create an empty PostgreSQL database; return its URL."""
    import sqlalchemy as sa

    name = "ota_test_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.engine.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    """Drop a database made by ``fresh_pg_database``."""
    import sqlalchemy as sa

    name = sa.engine.make_url(url).database
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@dataclass
class Server:
    """A running server."""

    url: str
    data_dir: Path
    database_url: Optional[str]
    proc: subprocess.Popen
    backend: str

    def db_args(self) -> List[str]:
        """``--data-dir``/``--database-url`` for ``ota-build admin``."""
        args = ["--data-dir", str(self.data_dir)]
        if self.database_url:
            args += ["--database-url", self.database_url]
        return args

    def admin(self, *args: str) -> Dict[str, Any]:
        """Run ``ota-build admin ...``; its JSON output.

        In this process: the same argument parsing and ``cmd_admin`` as the console script (whose own
        behaviour tests/test_server_admin.py checks through real processes), without an interpreter start
        and imports per call (seconds each on a busy machine; fixtures call this for every test).
        """
        from ota_build.cli.build import build_parser

        parsed = build_parser().parse_args(["admin", *self.db_args(), *args])
        out = io.StringIO()
        with _ADMIN_LOCK, contextlib.redirect_stdout(out):
            code = parsed.func(parsed)
        assert code == 0, f"ota-build admin {' '.join(args)}: exit {code}\n{out.getvalue()}"
        return json.loads(out.getvalue())


def start_server(data_dir: Path, database_url: Optional[str], backend: str = "sqlite",
                 extra: Optional[List[str]] = None) -> Server:
    """Start ``ota-build serve`` on a free loopback port and wait until it answers.

    The port is free when chosen, but another test process (pytest-xdist worker) may take it before the
    server binds it; then the server exits at once saying so, and it is started again on another port."""
    for _ in range(5):
        try:
            return _start_server_once(data_dir, database_url, backend, extra)
        except _PortTaken:
            continue
    raise RuntimeError("no free port after 5 attempts")


class _PortTaken(RuntimeError):
    pass


def _start_server_once(data_dir: Path, database_url: Optional[str], backend: str,
                       extra: Optional[List[str]]) -> Server:
    port = free_port()
    args = script("ota-build") + ["serve", "--port", str(port), "--data-dir", str(data_dir)] + (extra or [])
    if "--coap-port" not in args:
        args.append("--no-coap")  # the CoAP server only where a test asks for it (UDP 5683 is shared by all)
    if database_url:
        args += ["--database-url", database_url]
    log_path = data_dir.parent / f"server-{port}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()  # the child has its own copy
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log_path.read_text()
            if "address already in use" in text.lower():
                raise _PortTaken(text)
            raise RuntimeError(f"server exited with {proc.returncode}: {text}")
        try:
            if requests.get(url + "/test", timeout=1).status_code == 200:
                return Server(url, data_dir, database_url, proc, backend)
        except requests.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start within 60 s")


def stop_server(srv: Server) -> None:
    """Stop the server process group started by ``start_server``."""
    try:
        os.killpg(srv.proc.pid, signal.SIGTERM)
        srv.proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait()


@pytest.fixture(scope="session", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real server (SQLite, and PostgreSQL when configured), shared by the tests of this pytest process
    (each xdist worker has its own): tests keep apart through their own ``partner`` (own partner id,
    device type and credentials) and names derived from it. A test that needs a server of its own, or
    other server options, starts one with ``start_server``."""
    base = tmp_path_factory.mktemp(f"server-{request.param}")
    db_url = fresh_pg_database() if request.param == "postgresql" else None
    srv = start_server(base / "data", db_url, request.param)
    try:
        yield srv
    finally:
        stop_server(srv)
        if db_url:
            drop_pg_database(db_url)


@dataclass
class Partner:
    """A partner account on ``server`` with a device type, and its config in a temp directory."""

    server: Server
    dir: Path
    conf: Path
    partner_id: str
    device_type: str
    secrets: Dict[str, str]
    env: Dict[str, str] = field(default_factory=dict)

    def device(self, device_id: str, group: Optional[str] = None) -> str:
        """Register a device; its token."""
        args = ["device-token", "--partner", self.partner_id, "--device-type", self.device_type,
                "--device", device_id]
        if group:
            args += ["--group", group]
        return self.server.admin(*args)["token"]

    def api_token(self) -> str:
        """A long-lived partner token."""
        return self.server.admin("api-token", "--partner", self.partner_id)["token"]

    def access_token(self) -> str:
        """A token from ``POST /oauth/token``, as the original tools get it."""
        resp = requests.post(self.server.url + "/oauth/token",
                             headers={"Authorization": "Basic " + self.secrets["auth-string"]},
                             data={"username": self.secrets["username"], "password": self.secrets["userpw"],
                                   "grant_type": "password"}, timeout=30)
        assert resp.status_code == 200, resp.text
        return resp.json()["access_token"]


@pytest.fixture
def partner(server: Server, tmp_path: Path) -> Partner:
    """A new partner + device type, with partner-ota-conf.json and a credentials file in tmp_path."""
    pid = "p-" + uuid.uuid4().hex[:10]
    secrets = server.admin("partner", "--username", f"{pid}@example.com", "--partner-id", pid)
    dtid = server.admin("device-type", "--partner", pid)["deviceTypeId"]
    doc = json.loads(SEED_CONFIG)
    for key in ("username", "userpw", "auth-string"):
        doc.pop(key)
    doc.update(partnerId=pid, deviceTypeId=dtid, server=server.url)
    conf = tmp_path / "partner-ota-conf.json"
    conf.write_text(json.dumps(doc, indent=4))
    creds = tmp_path / "credentials.json"
    creds.write_text(json.dumps({k: secrets[k] for k in ("username", "userpw", "auth-string")}))
    creds.chmod(0o600)
    return Partner(server, tmp_path, conf, pid, dtid, secrets, {"OTA_CREDENTIALS_FILE": str(creds),
                                                                "OTA_SERVER": ""})
