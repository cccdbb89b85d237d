"""intake: its copy of the licence library (`license.v1`, DESIGN.md §7), and the index that
finds the cases of an applicant (who a clerk may look up in the library).

Revision ID: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SCHEMA = "intake"


def upgrade() -> None:
    op.create_table(
        "licenses",
        sa.Column("license_id", sa.String(128), primary_key=True),
        sa.Column("license_type", sa.String(64)),
        sa.Column("holder_id_number", sa.String(64)),
        sa.Column("case_id", sa.String(64), nullable=False),
        sa.Column("item_code", sa.String(64)),
        sa.Column("issued_at", sa.DateTime(timezone=True)),
        sa.Column("sha256", sa.String(64)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.Column("revoke_reason", sa.Text()),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_licenses_holder", "licenses", ["holder_id_number", "license_type"], schema=SCHEMA
    )
    op.create_index(
        "ix_cases_applicant",
        "cases",
        [sa.text("upper(btrim((application -> 'applicant') ->> 'id_number'))")],
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_index("ix_cases_applicant", table_name="cases", schema=SCHEMA)
    op.drop_index("ix_licenses_holder", table_name="licenses", schema=SCHEMA)
    op.drop_table("licenses", schema=SCHEMA)
