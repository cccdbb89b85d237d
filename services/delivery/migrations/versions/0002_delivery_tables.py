"""delivery: results (with e-licences and tracking numbers) and ratings.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = "delivery"


def upgrade() -> None:
    op.execute(sa.schema.CreateSequence(sa.Sequence("tracking_serial", schema=SCHEMA, start=1)))
    op.create_table(
        "results",
        sa.Column("case_id", sa.String(64), primary_key=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("item_code", sa.String(64), nullable=False),
        sa.Column("result", JSONB, nullable=False),
        sa.Column("license_id", sa.String(128), unique=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content", JSONB, nullable=False),
        sa.Column("delivery_method", sa.String(16), nullable=False),
        sa.Column("address", sa.String(500)),
        sa.Column("tracking_number", sa.String(32), unique=True),
        sa.Column("pickup_office", sa.String(64)),
        sa.Column("intake_office", sa.String(64)),
        sa.Column("department", sa.String(64), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.Column("closed_at", sa.DateTime(timezone=True)),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_results_waiting_pickup",
        "results",
        ["pickup_office", "issued_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("status = 'result_issued'"),
    )
    op.create_table(
        "ratings",
        sa.Column(
            "case_id",
            sa.String(64),
            sa.ForeignKey(f"{SCHEMA}.results.case_id"),
            primary_key=True,
        ),
        sa.Column("rating", sa.String(32), nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("item_code", sa.String(64), nullable=False),
        sa.Column("department", sa.String(64), nullable=False),
        sa.Column("intake_office", sa.String(64)),
        sa.Column("rated_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_index("ix_ratings_department", "ratings", ["department", "rated_at"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("ratings", schema=SCHEMA)
    op.drop_table("results", schema=SCHEMA)
    op.execute(sa.schema.DropSequence(sa.Sequence("tracking_serial", schema=SCHEMA)))
