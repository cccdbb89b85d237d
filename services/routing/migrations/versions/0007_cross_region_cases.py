"""routing: cases across regions (DESIGN.md §9), forwarded to a partner region ('origin') or
adopted from one ('handler'): which partner their events are relayed to.

Revision ID: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SCHEMA = "routing"


def upgrade() -> None:
    op.create_table(
        "cross_region_cases",
        sa.Column("case_id", sa.String(64), primary_key=True),
        sa.Column("partner_city", sa.String(32), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint("role IN ('origin', 'handler')", name="cross_region_cases_role"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("cross_region_cases", schema=SCHEMA)
