"""intake: inbox keys for event ids of any length, and the index the inbox pruner reads
(services/common/db.py `inbox_key`, services/common/inbox.py); the timeline is keyed the same
way, so an event with a long id reaches the case view instead of the dead-letter topic.

Revision ID: 0004
"""

from alembic import op
from sqlalchemy import text

from services.common.db import narrow_inbox, widen_inbox

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SCHEMA = "intake"


def upgrade() -> None:
    widen_inbox(op.get_bind(), SCHEMA)
    op.execute(text(f'ALTER TABLE "{SCHEMA}".timeline ALTER COLUMN event_id TYPE text'))


def downgrade() -> None:
    op.execute(text(f'DELETE FROM "{SCHEMA}".timeline WHERE length(event_id) > 64'))
    op.execute(text(f'ALTER TABLE "{SCHEMA}".timeline ALTER COLUMN event_id TYPE varchar(64)'))
    narrow_inbox(op.get_bind(), SCHEMA)
