"""intake: the applicants barred from commitments after a breached one (告知承诺, DESIGN.md §7).

Revision ID: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SCHEMA = "intake"


def upgrade() -> None:
    op.create_table(
        "barred_holders",
        sa.Column("case_id", sa.String(64), primary_key=True),
        sa.Column("holder_id_number", sa.String(64), nullable=False),
        sa.Column("barred_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_barred_holders_holder", "barred_holders", ["holder_id_number"], schema=SCHEMA
    )


def downgrade() -> None:
    op.drop_index("ix_barred_holders_holder", table_name="barred_holders", schema=SCHEMA)
    op.drop_table("barred_holders", schema=SCHEMA)
