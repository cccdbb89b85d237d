"""intake: cases, timeline, idempotency keys.

Revision ID: 0002
"""

from alembic import op

from services.intake.models import metadata

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("cases", "timeline", "idempotency_keys")


def upgrade() -> None:
    # The tables as first released; later changes get migrations of their own.
    metadata.create_all(op.get_bind(), tables=[metadata.tables[f"intake.{t}"] for t in TABLES])


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name, schema="intake")
