"""approval's tables (schema `approval`): every case routed here, as its department holds it."""

from __future__ import annotations

from sqlalchemy import Column, Date, DateTime, Index, Integer, MetaData, String, Table, Text, func
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
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
# The worklist: one department's open cases, oldest deadline first.
Index("ix_cases_worklist", cases.c.department, cases.c.status, cases.c.deadline)
