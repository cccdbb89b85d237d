"""routing: route inputs, the handover carried to approval, and the operator retry counter.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("routes", sa.Column("inputs", JSONB), schema="routing")
    op.add_column("routes", sa.Column("handover", JSONB), schema="routing")
    op.add_column(
        "routes",
        sa.Column("retries", sa.Integer, nullable=False, server_default="0"),
        schema="routing",
    )


def downgrade() -> None:
    op.drop_column("routes", "retries", schema="routing")
    op.drop_column("routes", "handover", schema="routing")
    op.drop_column("routes", "inputs", schema="routing")
