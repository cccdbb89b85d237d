"""Every service: the outbox and inbox of the shared runtime, in the service's own schema.

One file serves the four services: Alembic reads it beside each service's own versions
folder (see services/common/migrations.py), and it creates the tables in whichever schema
is being migrated.

Revision ID: 0001
"""

from alembic import op

from services.common.db import create_runtime_tables, drop_runtime_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _schema() -> str:
    schema = op.get_context().version_table_schema
    assert schema, "migrations run per service schema"
    return str(schema)


def upgrade() -> None:
    create_runtime_tables(op.get_bind(), _schema())


def downgrade() -> None:
    drop_runtime_tables(op.get_bind(), _schema())
