"""Initial schema: partners, keys, device types, devices, tokens, OTA pool,
binaries, upload sessions, firmware images, deployments, seed-001 packages.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "partners",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("partner_id", sa.String(64), nullable=False, unique=True),
        sa.Column("username", sa.String(200), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(300), nullable=False),
        sa.Column("client_id", sa.String(200), nullable=False),
        sa.Column("client_secret_hash", sa.String(300), nullable=False),
        sa.Column("created", TS, nullable=False),
    )
    op.create_table(
        "partner_keys",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("partner_pk", sa.Integer, sa.ForeignKey("partners.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("pem", sa.Text, nullable=False),
        sa.UniqueConstraint("partner_pk", "key_id"),
    )
    op.create_table(
        "device_types",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("partner_pk", sa.Integer, sa.ForeignKey("partners.id", ondelete="CASCADE"), nullable=False),
        sa.Column("device_type_id", sa.String(64), nullable=False),
        sa.UniqueConstraint("partner_pk", "device_type_id"),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("partner_pk", sa.Integer, sa.ForeignKey("partners.id", ondelete="CASCADE"), nullable=False),
        sa.Column("device_type_pk", sa.Integer, sa.ForeignKey("device_types.id", ondelete="CASCADE"), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("group_name", sa.String(64), nullable=True, index=True),
        sa.Column("state", sa.String(16), nullable=True),
        sa.Column("state_version_number", sa.String(20), nullable=True),
        sa.Column("state_message", sa.String(500), nullable=True),
        sa.Column("state_updated", TS, nullable=True),
        sa.UniqueConstraint("partner_pk", "device_id"),
    )
    op.create_table(
        "tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("partner_pk", sa.Integer, sa.ForeignKey("partners.id", ondelete="CASCADE"), nullable=False),
        sa.Column("device_pk", sa.Integer, sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=True),
        sa.Column("expires", TS, nullable=True),
        sa.Column("created", TS, nullable=False),
    )
    op.create_table(
        "ota_records",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("partner_pk", sa.Integer, sa.ForeignKey("partners.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("ota_type", sa.Integer, nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("version_number", sa.BigInteger, nullable=False),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("url", sa.String(1000), nullable=False),
        sa.Column("url2", sa.String(1000), nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("partner_pk", "name", "ota_type", "version", name="uq_record_version"),
        sa.UniqueConstraint("partner_pk", "ota_type", "version_number", name="uq_record_version_number"),
    )
    op.create_table(
        "binaries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("partner_pk", sa.Integer, sa.ForeignKey("partners.id", ondelete="CASCADE"), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("version_number", sa.BigInteger, nullable=False),
        sa.Column("ota_type", sa.Integer, nullable=False),
        sa.Column("in_repository", sa.Integer, nullable=False),
        sa.Column("created", TS, nullable=False),
        sa.UniqueConstraint("partner_pk", "sha256"),
    )
    op.create_table(
        "upload_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("partner_pk", sa.Integer, sa.ForeignKey("partners.id", ondelete="CASCADE"), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created", TS, nullable=False),
    )
    op.create_table(
        "firmware_images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("device_type_pk", sa.Integer, sa.ForeignKey("device_types.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("record_pk", sa.Integer, sa.ForeignKey("ota_records.id", ondelete="CASCADE"), nullable=False),
        sa.Column("ota_type", sa.Integer, nullable=False),
        sa.Column("version_number", sa.BigInteger, nullable=False),
        sa.Column("created", TS, nullable=False),
        sa.UniqueConstraint("device_type_pk", "ota_type", "version_number", name="uq_image_version"),
    )
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_pk", sa.Integer, sa.ForeignKey("firmware_images.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("device_pk", sa.Integer, sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=True,
                  index=True),
        sa.Column("group_name", sa.String(64), nullable=True, index=True),
        sa.Column("created", TS, nullable=False),
    )
    op.create_table(
        "packages",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("branch", sa.String(100), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("version_key", sa.String(400), nullable=False, index=True),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created", TS, nullable=False),
        sa.UniqueConstraint("name", "branch", "version", name="uq_package_version"),
    )
    op.create_index("ix_packages_latest", "packages", ["name", "branch", "version_key"])


def downgrade() -> None:
    for table in ("packages", "deployments", "firmware_images", "upload_sessions", "binaries", "ota_records",
                  "tokens", "devices", "device_types", "partner_keys", "partners"):
        op.drop_table(table)
