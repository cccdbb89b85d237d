"""approval: outbox and inbox of the shared runtime.

Revision ID: 0001
"""

from alembic import op

from services.common.db import create_runtime_tables, drop_runtime_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_runtime_tables(op.get_bind(), "approval")


def downgrade() -> None:
    drop_runtime_tables(op.get_bind(), "approval")
