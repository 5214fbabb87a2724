"""package_owners: the partner that owns each seed-001 package name.

Seed 001's API has no accounts, so any uploader could replace any package;
here every write already needs a partner token, and the first partner to
store a name owns it. Existing packages have no recorded uploader: their
names are claimed by their next upload.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "package_owners",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("partner_pk", sa.Integer, sa.ForeignKey("partners.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("package_owners")
