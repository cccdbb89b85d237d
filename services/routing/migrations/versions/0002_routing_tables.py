"""routing: catalog versions and routes (the triage queue is the failed routes).

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
        "catalog_versions",
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("city", sa.String(32), nullable=False),
        sa.Column("catalog", JSONB, nullable=False),
        sa.Column(
            "loaded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema="routing",
    )
    op.create_table(
        "routes",
        sa.Column("case_id", sa.String(64), primary_key=True),
        sa.Column("item_code", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("catalog_version", sa.Integer),
        sa.Column("route", JSONB),
        sa.Column("failure", JSONB),
        sa.Column("application", JSONB, nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "decided_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema="routing",
    )
    op.create_index(
        "ix_routes_failed",
        "routes",
        ["decided_at"],
        schema="routing",
        postgresql_where=sa.text("status = 'route_failed'"),
    )


def downgrade() -> None:
    op.drop_table("routes", schema="routing")
    op.drop_table("catalog_versions", schema="routing")
