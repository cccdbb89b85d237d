"""approval: the cases routed to each department (worklist, decisions, supplement rounds).

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cases",
        sa.Column("case_id", sa.String(64), primary_key=True),
        sa.Column("department", sa.String(64)),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("item", JSONB),
        sa.Column("route", JSONB),
        sa.Column("application", JSONB),
        sa.Column("accepted_at", sa.DateTime(timezone=True)),
        sa.Column("deadline", sa.Date),
        sa.Column("time_limit_days", sa.Integer),
        sa.Column("missing_materials", JSONB, nullable=False, server_default="[]"),
        sa.Column("pauses", JSONB, nullable=False, server_default="[]"),
        sa.Column("decision", sa.String(32)),
        sa.Column("reason", sa.Text),
        sa.Column("legal_basis", sa.Text),
        sa.Column("decided_at", sa.DateTime(timezone=True)),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True)),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema="approval",
    )
    op.create_index(
        "ix_cases_worklist", "cases", ["department", "status", "deadline"], schema="approval"
    )


def downgrade() -> None:
    op.drop_table("cases", schema="approval")
