"""intake: deferred materials (容缺受理) per case, and the last day to bring them (set when
approval accepts the case).

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "cases",
        sa.Column("deferred_materials", JSONB, nullable=False, server_default="[]"),
        schema="intake",
    )
    op.add_column("cases", sa.Column("deferred_due", sa.Date), schema="intake")


def downgrade() -> None:
    op.drop_column("cases", "deferred_due", schema="intake")
    op.drop_column("cases", "deferred_materials", schema="intake")
