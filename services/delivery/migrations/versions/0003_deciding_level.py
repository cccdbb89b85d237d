"""delivery: the deciding department's level on results and ratings (好差评 statistics by level).

Nullable: results issued before this revision, or from decision events that predate the
`level` field, have no level on record (delivery never read it, and the events are not kept);
the statistics show them under a null key rather than guessing a level from a department code.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SCHEMA = "delivery"


def upgrade() -> None:
    op.add_column("results", sa.Column("level", sa.String(16)), schema=SCHEMA)
    op.add_column("ratings", sa.Column("level", sa.String(16)), schema=SCHEMA)
    # Statistics select a period of rated_at and group the whole period.
    op.create_index("ix_ratings_rated_at", "ratings", ["rated_at"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_index("ix_ratings_rated_at", table_name="ratings", schema=SCHEMA)
    op.drop_column("ratings", "level", schema=SCHEMA)
    op.drop_column("results", "level", schema=SCHEMA)
