"""approval: bundles (一件事, DESIGN.md §8): each case's bundle, and the bundle's clock.

`cases.bundle_id` and `clock_timers.bundle_id` let every event approval emits about a member
name its bundle. `bundles` holds what the bundle's clock needs (its lead, committed limit and
members from `gov.bundle.submitted.v1`, the first member acceptance, the deadline); its
warnings and overdue are `clock_timers` rows of step `bundle`, keyed by the bundle id in
`case_id`. `bundle_members` finds a member's bundle by case id.

Revision ID: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SCHEMA = "approval"


def upgrade() -> None:
    op.add_column("cases", sa.Column("bundle_id", sa.String(64)), schema=SCHEMA)
    op.add_column("clock_timers", sa.Column("bundle_id", sa.String(64)), schema=SCHEMA)
    op.create_table(
        "bundles",
        sa.Column("bundle_id", sa.String(64), primary_key=True),
        sa.Column("bundle_code", sa.String(64)),  # null until gov.bundle.submitted.v1
        sa.Column("lead", sa.String(64)),
        sa.Column("time_limit_days", sa.Integer),
        sa.Column("submitted_at", sa.DateTime(timezone=True)),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True)),
        sa.Column("first_accepted_at", sa.DateTime(timezone=True)),
        sa.Column("deadline", sa.Date),
        sa.Column("decided_at", sa.DateTime(timezone=True)),  # every member decided or ended
        schema=SCHEMA,
    )
    op.create_table(
        "bundle_members",
        sa.Column("case_id", sa.String(64), primary_key=True),
        sa.Column("bundle_id", sa.String(64), nullable=False),
        sa.Column("item_code", sa.String(64)),
        sa.Column("position", sa.Integer, nullable=False),
        schema=SCHEMA,
    )
    op.create_index("ix_bundle_members_bundle", "bundle_members", ["bundle_id"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("bundle_members", schema=SCHEMA)
    op.drop_table("bundles", schema=SCHEMA)
    op.drop_column("clock_timers", "bundle_id", schema=SCHEMA)
    op.drop_column("cases", "bundle_id", schema=SCHEMA)
