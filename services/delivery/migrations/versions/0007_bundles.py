"""delivery: bundles (一件事, DESIGN.md §8): one delivery for every member of a bundle.

`results.bundle_id` marks a member's result: held (`result_issued`) until the bundle goes out
together. `bundles` is one row per bundle (upserted and locked by every event and request
about it, so the "all done" check runs once), `bundle_members` one row per member, listed by
`gov.bundle.submitted.v1` or ended by its own withdrawal or termination (in either order).
One parcel carries a postal bundle: its members share the bundle's tracking number, so the
number stays unique among single cases and bundles, not among members.

Revision ID: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SCHEMA = "delivery"


def upgrade() -> None:
    op.add_column("results", sa.Column("bundle_id", sa.String(64)), schema=SCHEMA)
    op.create_index("ix_results_bundle", "results", ["bundle_id"], schema=SCHEMA)
    op.drop_constraint("results_tracking_number_key", "results", schema=SCHEMA)
    op.create_index(
        "ux_results_tracking_number",
        "results",
        ["tracking_number"],
        unique=True,
        schema=SCHEMA,
        postgresql_where=sa.text("bundle_id IS NULL"),
    )
    op.create_table(
        "bundles",
        sa.Column("bundle_id", sa.String(64), primary_key=True),
        sa.Column("bundle_code", sa.String(64)),  # null until gov.bundle.submitted.v1
        sa.Column("status", sa.String(16), nullable=False, server_default="in_progress"),
        sa.Column("delivery_method", sa.String(16)),
        sa.Column("address", sa.String(500)),
        sa.Column("office_code", sa.String(64)),
        sa.Column("channel", sa.String(16)),
        sa.Column("submitted_at", sa.DateTime(timezone=True)),
        sa.Column("ready_at", sa.DateTime(timezone=True)),
        sa.Column("tracking_number", sa.String(32), unique=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.Column("closed_at", sa.DateTime(timezone=True)),
        sa.Column("rating", sa.String(32)),
        sa.Column("rated_at", sa.DateTime(timezone=True)),
        schema=SCHEMA,
    )
    op.create_table(
        "bundle_members",
        sa.Column("case_id", sa.String(64), primary_key=True),
        sa.Column("bundle_id", sa.String(64), nullable=False),
        sa.Column("item_code", sa.String(64)),
        sa.Column("position", sa.Integer),  # its place in the bundle event's list
        sa.Column("listed", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("ended", sa.String(16)),  # withdrawn | terminated
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("ended_reason", sa.String(64)),
        schema=SCHEMA,
    )
    op.create_index("ix_bundle_members_bundle", "bundle_members", ["bundle_id"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("bundle_members", schema=SCHEMA)
    op.drop_table("bundles", schema=SCHEMA)
    op.drop_index("ux_results_tracking_number", "results", schema=SCHEMA)
    op.create_unique_constraint(
        "results_tracking_number_key", "results", ["tracking_number"], schema=SCHEMA
    )
    op.drop_index("ix_results_bundle", "results", schema=SCHEMA)
    op.drop_column("results", "bundle_id", schema=SCHEMA)
