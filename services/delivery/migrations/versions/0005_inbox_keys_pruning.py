"""delivery: inbox keys for event ids of any length, and the index the inbox pruner reads
(services/common/db.py `inbox_key`, services/common/inbox.py).

Revision ID: 0005
"""

from alembic import op

from services.common.db import narrow_inbox, widen_inbox

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SCHEMA = "delivery"


def upgrade() -> None:
    widen_inbox(op.get_bind(), SCHEMA)


def downgrade() -> None:
    narrow_inbox(op.get_bind(), SCHEMA)
