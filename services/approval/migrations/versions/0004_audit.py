"""approval: the hash-chained audit trail of case reads and decisions (services/common/audit.py).

Revision ID: 0004
"""

from alembic import op

from services.common.audit import create_audit_table, drop_audit_table

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SCHEMA = "approval"


def upgrade() -> None:
    create_audit_table(op.get_bind(), SCHEMA)


def downgrade() -> None:
    drop_audit_table(op.get_bind(), SCHEMA)
