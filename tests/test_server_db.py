"""Schema migrations: the shipped Alembic migrations create exactly the models' schema."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from ota_build.server.db import Database, default_database_url, migrate
from ota_build.server.models import Base

from .serverutil import BACKENDS, drop_pg_database, fresh_pg_database


@pytest.mark.parametrize("backend", BACKENDS)
def test_migrations_match_models(backend, tmp_path):
    url = fresh_pg_database() if backend == "postgresql" else default_database_url(str(tmp_path))
    try:
        db = Database(url, run_migrations=True)
        migrate(db.engine)  # idempotent
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert "alembic_version" in inspect(conn).get_table_names()
        db.dispose()
        # index/constraint naming differences are not schema differences
        assert [d for d in diff if d[0] not in ("add_index", "remove_index")] == [], diff
    finally:
        if backend == "postgresql":
            drop_pg_database(url)
