"""packages.version_key compares byte by byte ("C" collation) on PostgreSQL.

``version_key`` is built to sort like the version when compared byte by byte,
as SQLite does. A PostgreSQL database created with a language collation
(en_US.UTF-8, the usual default) ignores punctuation at first, so
``1.0-beta.2`` and ``1.0-betan`` swapped places and "latest" depended on the
database. No change on SQLite.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("packages", "version_key", type_=sa.String(400, collation="C"),
                        existing_type=sa.String(400), existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("packages", "version_key", type_=sa.String(400), existing_type=sa.String(400, collation="C"),
                        existing_nullable=False)
