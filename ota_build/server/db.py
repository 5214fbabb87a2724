"""Database engine, sessions and schema migrations.

SQLite in the data directory by default (WAL mode, so several server workers
and the admin command can share it); any SQLAlchemy URL otherwise, e.g.
``postgresql+psycopg://user@/ota?host=/var/run/postgresql``. The schema is
created and upgraded by the Alembic migrations shipped in this package, never
by ``create_all``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
READ_TIMEOUT_MS = 2000  # PostgreSQL statement_timeout of Database.reader


DB_FILE = "ota.sqlite3"


def default_database_url(data_dir: str) -> str:
    """The embedded SQLite database of ``data_dir``."""
    return f"sqlite:///{os.path.abspath(os.path.join(data_dir, DB_FILE))}"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, durable commits (``synchronous=FULL``), a busy timeout and foreign keys."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit the server acknowledged survives a power loss (NORMAL may lose the last ones in WAL mode)
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def migrate(engine: Engine) -> None:
    """Apply every pending Alembic migration (idempotent)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    log.info("database schema is up to date")


class Database:
    """An engine plus its session factory, and ``reader``: the engine for hot single-statement reads.

    On PostgreSQL ``reader`` is a second, autocommit pool: a read then costs one
    round trip instead of BEGIN ... ROLLBACK around it (measured: 363 against
    608 us per ``/latestVersion`` query). Its statements time out after
    READ_TIMEOUT_MS, since its callers may run on the event loop. On SQLite it
    is ``engine`` itself.
    """

    def __init__(self, url: str, run_migrations: bool = False):
        self.url = url
        self.engine = make_engine(url)
        if run_migrations:
            migrate(self.engine)
        self.reader = self.engine if url.startswith("sqlite") else create_engine(
            url, pool_pre_ping=True, pool_size=5, max_overflow=10, isolation_level="AUTOCOMMIT",
            connect_args={"connect_timeout": 5, "options": f"-c statement_timeout={READ_TIMEOUT_MS}"}
            if url.startswith("postgresql") else {})
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        """A new session (use it as a context manager)."""
        return self._sessions()

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
        if self.reader is not self.engine:
            self.reader.dispose()


def open_database(data_dir: str, url: Optional[str] = None, run_migrations: bool = True) -> Database:
    """Open (and by default migrate) the database of a data directory.

    The directory is 0700 and the default SQLite file 0600 (created so before SQLite opens it; its
    ``-wal`` and ``-shm`` files take the database file's mode)."""
    Path(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    if url is None:
        path = Path(data_dir) / DB_FILE
        os.close(os.open(str(path), os.O_RDWR | os.O_CREAT, 0o600))
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{path}{suffix}", 0o600)
    return Database(url or default_database_url(data_dir), run_migrations=run_migrations)
