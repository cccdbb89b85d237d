"""intake: deferred materials (容缺受理) per case, and the last day to bring them (set when
approval accepts the case).

Revision ID: 0005
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # IF NOT EXISTS: 0002 creates the tables from the models as they are now, so on a new
    # database these columns are there already.
    op.execute(
        "ALTER TABLE intake.cases "
        "ADD COLUMN IF NOT EXISTS deferred_materials JSONB NOT NULL DEFAULT '[]', "
        "ADD COLUMN IF NOT EXISTS deferred_due DATE"
    )


def downgrade() -> None:
    op.drop_column("cases", "deferred_due", schema="intake")
    op.drop_column("cases", "deferred_materials", schema="intake")
