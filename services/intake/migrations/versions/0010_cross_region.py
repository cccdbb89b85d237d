"""intake: cases across regions (跨省通办, DESIGN.md §9): the cases adopted from a partner
region, with their origin, and the forwarded cases refused, for operators.

Revision ID: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SCHEMA = "intake"


def upgrade() -> None:
    op.create_table(
        "adopted_cases",
        sa.Column("case_id", sa.String(64), primary_key=True),
        sa.Column("origin_city", sa.String(32), nullable=False),
        sa.Column("origin_office", sa.String(64)),
        sa.Column("forwarded_event_id", sa.Text, nullable=False),
        sa.Column("adopted_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "adoption_refusals",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("case_id", sa.String(64), nullable=False),
        sa.Column("from_city", sa.String(32), nullable=False),
        sa.Column("item_code", sa.String(64), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("refused_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_adoption_refusals_refused_at", "adoption_refusals", ["refused_at"], schema=SCHEMA
    )


def downgrade() -> None:
    op.drop_index("ix_adoption_refusals_refused_at", table_name="adoption_refusals", schema=SCHEMA)
    op.drop_table("adoption_refusals", schema=SCHEMA)
    op.drop_table("adopted_cases", schema=SCHEMA)
