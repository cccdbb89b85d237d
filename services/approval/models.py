"""approval's tables (schema `approval`): every case routed here, as its department holds it."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(schema="approval")

cases = Table(
    "cases",
    metadata,
    Column("case_id", String(64), primary_key=True),
    # NULL only for a case withdrawn before its routing event arrived (review.Unrouted).
    Column("department", String(64)),  # route.handled_by
    Column("status", String(32), nullable=False),
    Column("item", JSONB),  # ItemSnapshot
    Column("route", JSONB),  # Route
    Column("application", JSONB),  # Application
    Column("accepted_at", DateTime(timezone=True)),
    Column("deadline", Date),  # NULL: past the calendar (an alarm), or not accepted
    Column("time_limit_days", Integer),
    Column("missing_materials", JSONB, nullable=False, server_default="[]"),
    # Supplement rounds: [{"requested_at", "supplemented_at"}], the clock's paused intervals.
    Column("pauses", JSONB, nullable=False, server_default="[]"),
    Column("decision", String(32)),
    Column("reason", Text),
    Column("legal_basis", Text),
    Column("decided_at", DateTime(timezone=True)),
    Column("withdrawn_at", DateTime(timezone=True)),
    Column("handover_problem", Text),  # entrusted handover that failed verification
    # Deferred materials not yet brought (容缺受理), and the last day to bring them.
    Column("deferred", JSONB, nullable=False, server_default="[]"),
    Column("deferred_due", Date),
    Column("bundle_id", String(64)),  # the bundle it is a member of (DESIGN.md §8)
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
# The worklist: one department's open cases, oldest deadline first.
Index("ix_cases_worklist", cases.c.department, cases.c.status, cases.c.deadline)

# Durable SLA timers (the legal clock's warnings and overdue, and follow-up deadlines): one row
# per case, step and point, fired at most once. Any approval process may fire a due timer; the
# row lock (SKIP LOCKED) and `fired_at`, set in the same transaction as the outbox event, make
# each fire exactly once across processes and restarts.
clock_timers = Table(
    "clock_timers",
    metadata,
    Column("case_id", String(64), primary_key=True),
    # decision | followup | verification | deferral (lapse) | bundle (then case_id holds the
    # bundle id: the bundle's own clock, DESIGN.md §8)
    Column("step", String(16), primary_key=True),
    Column("point", Numeric(4, 3), primary_key=True),  # share of the limit; 1 = overdue
    Column("department", String(64), nullable=False),
    Column("deadline", Date),
    Column("due_at", DateTime(timezone=True)),  # NULL: paused (supplement) or unknown
    Column("fired_at", DateTime(timezone=True)),
    Column("bundle_id", String(64)),  # a member's (or the bundle's) clock: its events name it
)
Index(
    "ix_clock_timers_due",
    clock_timers.c.due_at,
    postgresql_where=clock_timers.c.fired_at.is_(None),
)

# Follow-ups of bad ratings (好差评: a dissatisfied rating must be answered in time).
followups = Table(
    "followups",
    metadata,
    Column("case_id", String(64), primary_key=True),
    Column("department", String(64), nullable=False),
    Column("rating", String(32), nullable=False),
    Column("comment", Text),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("deadline", Date),
    Column("answer", Text),
    Column("answered_at", DateTime(timezone=True)),
)
Index("ix_followups_department", followups.c.department, followups.c.answered_at)

# Verifications of commitments (告知承诺, DESIGN.md §7): one per approved case with committed
# materials, opened when the approval takes effect, due `verify_days` working days after it;
# its warnings and overdue are `clock_timers` rows of step `verification`.
verifications = Table(
    "verifications",
    metadata,
    Column("case_id", String(64), primary_key=True),
    Column("department", String(64), nullable=False),
    Column("item_code", String(64), nullable=False),
    Column("committed", JSONB, nullable=False),  # the material codes committed to
    Column("approved_at", DateTime(timezone=True), nullable=False),
    Column("due", Date),  # NULL: past the calendar's covers_until
    Column("status", String(16), nullable=False),  # open | confirmed | breached
    Column("note", Text),
    Column("verified_at", DateTime(timezone=True)),
)
Index("ix_verifications_department", verifications.c.department, verifications.c.status)

# Bundles (一件事, DESIGN.md §8): what the bundle's clock needs. Its deadline is the first
# member acceptance + the bundle's time limit in working days; its warnings and overdue are
# `clock_timers` rows of step `bundle` (case_id = the bundle id, department = the lead), armed
# and stopped under this row's lock (upserted first by every event about the bundle).
bundles = Table(
    "bundles",
    metadata,
    Column("bundle_id", String(64), primary_key=True),
    Column("bundle_code", String(64)),  # null until gov.bundle.submitted.v1 arrives
    Column("lead", String(64)),  # 牵头部门
    Column("time_limit_days", Integer),
    Column("submitted_at", DateTime(timezone=True)),
    Column("withdrawn_at", DateTime(timezone=True)),
    Column("first_accepted_at", DateTime(timezone=True)),
    Column("deadline", Date),  # NULL: no member accepted yet, or past the calendar
    Column("decided_at", DateTime(timezone=True)),  # every member decided or ended: clock off
)

# A member's bundle by its case id (members listed by gov.bundle.submitted.v1, in order).
bundle_members = Table(
    "bundle_members",
    metadata,
    Column("case_id", String(64), primary_key=True),
    Column("bundle_id", String(64), nullable=False),
    Column("item_code", String(64)),
    Column("position", Integer, nullable=False),
)
Index("ix_bundle_members_bundle", bundle_members.c.bundle_id)

# Cases across regions (跨省通办, DESIGN.md §9): a case routed here on the path `cross_region`
# is decided by the partner region (`partner_city`), never here. It is only remembered, so the
# events about it that still pass through this region (its withdrawal, its rating after the
# pickup at this region's counter) are recognised and left alone, with no worklist row.
cross_region_cases = Table(
    "cross_region_cases",
    metadata,
    Column("case_id", String(64), primary_key=True),
    Column("partner_city", String(16), nullable=False),
    Column("routed_at", DateTime(timezone=True), nullable=False),
)
