"""approval: cases across regions (跨省通办, DESIGN.md §9): the cases routed here on the path
`cross_region`, decided by a partner region. Approval takes none of them (no acceptance, no
clock, no worklist row); this table only lets it recognise their later events.

Revision ID: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

SCHEMA = "approval"


def upgrade() -> None:
    op.create_table(
        "cross_region_cases",
        sa.Column("case_id", sa.String(64), primary_key=True),
        sa.Column("partner_city", sa.String(16), nullable=False),
        sa.Column("routed_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("cross_region_cases", schema=SCHEMA)
