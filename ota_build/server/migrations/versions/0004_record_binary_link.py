"""ota_records.binary_pk links a record to its stored binary; devices.state_version_number is an integer.

Until now the server found a record's binary by parsing the record's ``url``
(``.../v1/ota/partners/P/repository/<sha256>``) on every read. The link is now
a nullable foreign key to ``binaries``, filled here from the existing URLs;
the URL itself stays (the API returns it). A device's reported versionNumber
was stored as text; it becomes a BIGINT like every other versionNumber.

SQLite: plain ALTER TABLE (ADD/DROP/RENAME COLUMN, SQLite >= 3.35) rather than
batch mode, whose copy-and-drop of a table would cascade-delete the rows that
reference it (foreign keys are on).

Revision ID: 0004
Revises: 0003
"""
import re

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# frozen copy of ota_build.server.services.REPO_URL_RE as of this revision
REPO_URL_RE = re.compile(r"/v1/ota/partners/[^/]+/repository/([0-9a-f]{64})$")
FK_NAME = "fk_ota_records_binary_pk"


def upgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    if sqlite:  # ADD COLUMN with an inline REFERENCES clause (SQLite cannot add a constraint later)
        op.execute("ALTER TABLE ota_records ADD COLUMN binary_pk INTEGER REFERENCES binaries (id)")
    else:
        op.add_column("ota_records", sa.Column("binary_pk", sa.Integer, nullable=True))
        op.create_foreign_key(FK_NAME, "ota_records", "binaries", ["binary_pk"], ["id"])
    records = sa.table("ota_records", sa.column("id", sa.Integer), sa.column("partner_pk", sa.Integer),
                       sa.column("url", sa.String), sa.column("binary_pk", sa.Integer))
    binaries = sa.table("binaries", sa.column("id", sa.Integer), sa.column("partner_pk", sa.Integer),
                        sa.column("sha256", sa.String))
    rows = bind.execute(sa.select(records.c.id, records.c.partner_pk, records.c.url)
                        .where(records.c.url.like("%/repository/%"))).all()
    for rec_id, partner_pk, url in rows:
        m = REPO_URL_RE.search(url or "")
        if not m:
            continue
        binary_pk = bind.execute(sa.select(binaries.c.id).where(binaries.c.partner_pk == partner_pk,
                                                                binaries.c.sha256 == m.group(1))).scalar()
        if binary_pk is not None:
            bind.execute(records.update().where(records.c.id == rec_id).values(binary_pk=binary_pk))

    if sqlite:
        op.add_column("devices", sa.Column("state_version_number_int", sa.BigInteger, nullable=True))
        op.execute("UPDATE devices SET state_version_number_int = CAST(state_version_number AS INTEGER) "
                   "WHERE state_version_number IS NOT NULL AND state_version_number != ''")
        op.drop_column("devices", "state_version_number")
        op.alter_column("devices", "state_version_number_int", new_column_name="state_version_number")
    else:
        op.alter_column("devices", "state_version_number", type_=sa.BigInteger, existing_type=sa.String(20),
                        existing_nullable=True,
                        postgresql_using="NULLIF(state_version_number, '')::bigint")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.add_column("devices", sa.Column("state_version_number_text", sa.String(20), nullable=True))
        op.execute("UPDATE devices SET state_version_number_text = CAST(state_version_number AS TEXT) "
                   "WHERE state_version_number IS NOT NULL")
        op.drop_column("devices", "state_version_number")
        op.alter_column("devices", "state_version_number_text", new_column_name="state_version_number")
        op.drop_column("ota_records", "binary_pk")
    else:
        op.alter_column("devices", "state_version_number", type_=sa.String(20), existing_type=sa.BigInteger,
                        existing_nullable=True, postgresql_using="state_version_number::text")
        op.drop_constraint(FK_NAME, "ota_records", type_="foreignkey")
        op.drop_column("ota_records", "binary_pk")
