"""Alembic environment: runs on the connection handed over by ota_build.server.db.migrate."""

from __future__ import annotations

from alembic import context

from ota_build.server.models import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only through ota_build.server.db.migrate
    raise RuntimeError("run migrations through `ota-build serve` / ota_build.server.db.migrate")
context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
