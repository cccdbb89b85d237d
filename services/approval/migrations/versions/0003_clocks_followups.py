"""approval: durable SLA timers, follow-ups of bad ratings, handover problems.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("cases", sa.Column("handover_problem", sa.Text), schema="approval")
    op.create_table(
        "clock_timers",
        sa.Column("case_id", sa.String(64), primary_key=True),
        sa.Column("step", sa.String(16), primary_key=True),
        sa.Column("point", sa.Numeric(4, 3), primary_key=True),
        sa.Column("department", sa.String(64), nullable=False),
        sa.Column("deadline", sa.Date),
        sa.Column("due_at", sa.DateTime(timezone=True)),
        sa.Column("fired_at", sa.DateTime(timezone=True)),
        schema="approval",
    )
    op.create_index(
        "ix_clock_timers_due",
        "clock_timers",
        ["due_at"],
        schema="approval",
        postgresql_where=sa.text("fired_at IS NULL"),
    )
    op.create_table(
        "followups",
        sa.Column("case_id", sa.String(64), primary_key=True),
        sa.Column("department", sa.String(64), nullable=False),
        sa.Column("rating", sa.String(32), nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline", sa.Date),
        sa.Column("answer", sa.Text),
        sa.Column("answered_at", sa.DateTime(timezone=True)),
        schema="approval",
    )
    op.create_index(
        "ix_followups_department",
        "followups",
        ["department", "answered_at"],
        schema="approval",
    )


def downgrade() -> None:
    op.drop_table("followups", schema="approval")
    op.drop_table("clock_timers", schema="approval")
    op.drop_column("cases", "handover_problem", schema="approval")
