"""delivery: a partner's issued result that arrived before this region's own routed event of the
case (they come over different topics and groups): kept until the routed event says where it
is picked up (DESIGN.md §9).

Revision ID: 0009
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

SCHEMA = "delivery"


def upgrade() -> None:
    op.create_table(
        "partner_results_waiting",
        sa.Column("case_id", sa.String(64), primary_key=True),
        sa.Column("issued", JSONB, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("partner_results_waiting", schema=SCHEMA)
