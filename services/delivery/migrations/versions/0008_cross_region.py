"""delivery: cases across regions (跨省通办, DESIGN.md §9): this region's part in each (origin or
handler), the partner region, the origin office and the delivery chosen there.

Revision ID: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SCHEMA = "delivery"


def upgrade() -> None:
    op.create_table(
        "cross_region_cases",
        sa.Column("case_id", sa.String(64), primary_key=True),
        sa.Column("partner_city", sa.String(16), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("office_code", sa.String(64)),
        sa.Column("delivery_method", sa.String(16), nullable=False),
        sa.Column("item_code", sa.String(64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("cross_region_cases", schema=SCHEMA)
