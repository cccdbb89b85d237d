"""approval: deferred materials (容缺受理) per case, and the last day to bring them.

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "cases",
        sa.Column("deferred", JSONB, nullable=False, server_default="[]"),
        schema="approval",
    )
    op.add_column("cases", sa.Column("deferred_due", sa.Date), schema="approval")


def downgrade() -> None:
    op.drop_column("cases", "deferred_due", schema="approval")
    op.drop_column("cases", "deferred", schema="approval")
