"""approval: verifications of the commitments an approval rested on (告知承诺, DESIGN.md §7).

Revision ID: 0007
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "verifications",
        sa.Column("case_id", sa.String(64), primary_key=True),
        sa.Column("department", sa.String(64), nullable=False),
        sa.Column("item_code", sa.String(64), nullable=False),
        sa.Column("committed", JSONB, nullable=False),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due", sa.Date),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("verified_at", sa.DateTime(timezone=True)),
        schema="approval",
    )
    op.create_index(
        "ix_verifications_department",
        "verifications",
        ["department", "status"],
        schema="approval",
    )


def downgrade() -> None:
    op.drop_index("ix_verifications_department", table_name="verifications", schema="approval")
    op.drop_table("verifications", schema="approval")
