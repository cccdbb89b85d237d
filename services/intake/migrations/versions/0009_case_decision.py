"""intake: each case's decision (approved | denied) as its decision event said, apart from the
status: a bundle's dependents judge their prerequisites by it (DESIGN.md §8).

Revision ID: 0009
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # IF NOT EXISTS: 0002 creates `cases` from the models as they are now.
    op.execute("ALTER TABLE intake.cases ADD COLUMN IF NOT EXISTS decision VARCHAR(16)")
    # Cases decided before: their decision is on their timeline.
    op.execute(
        "UPDATE intake.cases c SET decision = CASE t.type "
        "WHEN 'gov.case.approved.v1' THEN 'approved' ELSE 'denied' END "
        "FROM intake.timeline t WHERE t.case_id = c.case_id AND c.decision IS NULL "
        "AND t.type IN ('gov.case.approved.v1', 'gov.case.denied.v1')"
    )


def downgrade() -> None:
    op.drop_column("cases", "decision", schema="intake")
