"""intake's tables (schema `intake`): cases as the counter sees them, and their timeline."""

from __future__ import annotations

from sqlalchemy import Column, Date, DateTime, Index, Integer, MetaData, String, Table, Text, func
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(schema="intake")

cases = Table(
    "cases",
    metadata,
    Column("case_id", String(64), primary_key=True),
    Column("status", String(32), nullable=False),
    Column("status_rank", Integer, nullable=False),
    Column("item_code", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("office_code", String(64)),
    Column("application", JSONB, nullable=False),
    Column("missing_materials", JSONB, nullable=False),
    Column("route", JSONB),
    Column("failure", JSONB),
    Column("deadline", Date),
    # Deferred materials (容缺受理): [{"code", "received"}]; due: set at acceptance.
    Column("deferred_materials", JSONB, nullable=False, server_default="[]"),
    Column("deferred_due", Date),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
Index("ix_cases_office", cases.c.office_code, cases.c.created_at)

timeline = Table(
    "timeline",
    metadata,
    # inbox_key(ce_id): an id of any length (services/common/db.py)
    Column("event_id", Text, primary_key=True),
    Column("case_id", String(64), nullable=False),
    Column("type", String(128), nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("source", String(128), nullable=False),
    Column("data", JSONB),
)
Index("ix_timeline_case", timeline.c.case_id, timeline.c.time)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key", String(256), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("case_id", String(64), nullable=False),
    Column("response", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
