"""delivery: the licence library's side of a result (DESIGN.md §7): the e-licence's type, and
its revocation when the decision is revoked (`gov.case.revoked.v1`).

`license_type` is null for results issued before this revision and for results that are not
e-licences of a typed kind; `revoked_at` set means the decision (and its licence, if any) no
longer stands: verification then answers `revoked`.

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SCHEMA = "delivery"


def upgrade() -> None:
    op.add_column("results", sa.Column("license_type", sa.String(64)), schema=SCHEMA)
    op.add_column("results", sa.Column("revoked_at", sa.DateTime(timezone=True)), schema=SCHEMA)
    op.add_column("results", sa.Column("revoke_reason", sa.String(64)), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("results", "revoke_reason", schema=SCHEMA)
    op.drop_column("results", "revoked_at", schema=SCHEMA)
    op.drop_column("results", "license_type", schema=SCHEMA)
