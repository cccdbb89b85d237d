"""routing: the bundle (一件事, DESIGN.md §8) a member case belongs to, so a retry out of
triage routes it by its bundle's window and names its bundle again.

Revision ID: 0006
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SCHEMA = "routing"


def upgrade() -> None:
    op.execute(
        "ALTER TABLE routing.routes "
        "ADD COLUMN bundle_id VARCHAR(64), "
        "ADD COLUMN bundle_code VARCHAR(64)"
    )


def downgrade() -> None:
    op.drop_column("routes", "bundle_code", schema=SCHEMA)
    op.drop_column("routes", "bundle_id", schema=SCHEMA)
