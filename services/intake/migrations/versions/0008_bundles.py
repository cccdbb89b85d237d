"""intake: bundles (一件事一次办, DESIGN.md §8): the bundle rows, their own timeline and
Idempotency-Keys, and on each case the bundle it is a member of and the members it waits for.

Revision ID: 0008
"""

from alembic import op

from services.intake.models import metadata

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SCHEMA = "intake"
TABLES = ("bundles", "bundle_timeline", "bundle_keys")


def upgrade() -> None:
    # IF NOT EXISTS: 0002 creates `cases` from the models as they are now, so on a new
    # database these columns and their index are there already.
    op.execute(
        "ALTER TABLE intake.cases "
        "ADD COLUMN IF NOT EXISTS bundle_id VARCHAR(64), "
        "ADD COLUMN IF NOT EXISTS bundle_code VARCHAR(64), "
        "ADD COLUMN IF NOT EXISTS after JSONB NOT NULL DEFAULT '[]'"
    )
    op.execute("CREATE INDEX IF NOT EXISTS ix_cases_bundle ON intake.cases (bundle_id)")
    metadata.create_all(op.get_bind(), tables=[metadata.tables[f"{SCHEMA}.{t}"] for t in TABLES])


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name, schema=SCHEMA)
    op.drop_index("ix_cases_bundle", table_name="cases", schema=SCHEMA)
    op.drop_column("cases", "after", schema=SCHEMA)
    op.drop_column("cases", "bundle_code", schema=SCHEMA)
    op.drop_column("cases", "bundle_id", schema=SCHEMA)
