"""routing: the ce_id of the last gov.case.forwarded.v1 sent for a case (DESIGN.md §9): a
partner's refusal applies only when it answers that forwarding.

Revision ID: 0008
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SCHEMA = "routing"


def upgrade() -> None:
    op.execute(
        f"ALTER TABLE {SCHEMA}.cross_region_cases ADD COLUMN IF NOT EXISTS forwarded_id varchar(64)"
    )


def downgrade() -> None:
    op.drop_column("cross_region_cases", "forwarded_id", schema=SCHEMA)
