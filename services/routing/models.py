"""routing's tables (schema `routing`)."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, func
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(schema="routing")

catalog_versions = Table(
    "catalog_versions",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("city", String(32), nullable=False),
    Column("catalog", JSONB, nullable=False),
    Column("loaded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

routes = Table(
    "routes",
    metadata,
    Column("case_id", String(64), primary_key=True),
    Column("item_code", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # routed | route_failed
    Column("rule", String(64), nullable=False),
    Column("catalog_version", Integer),
    Column("route", JSONB),
    Column("failure", JSONB),
    Column("application", JSONB, nullable=False),
    Column("submitted_at", DateTime(timezone=True), nullable=False),
    Column("decided_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # 0003: what the rules used, the intake office's handover (carried on to approval, also
    # when an operator retries a failed case), and how many times operators retried it.
    Column("inputs", JSONB),
    Column("handover", JSONB),
    Column("retries", Integer, nullable=False, server_default="0"),
    # 0006: the bundle (§8) a member case belongs to, kept for a retry out of triage.
    Column("bundle_id", String(64)),
    Column("bundle_code", String(64)),
)

# 0007: cases across regions (DESIGN.md §9): taken here and forwarded to `partner_city`
# (role 'origin'), or adopted from it (role 'handler'); `routing-xregion` relays their events
# there (services.routing.domain.xregion).
cross_region_cases = Table(
    "cross_region_cases",
    metadata,
    Column("case_id", String(64), primary_key=True),
    Column("partner_city", String(32), nullable=False),
    Column("role", String(16), nullable=False),  # origin | handler
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # 0008: the ce_id of the last gov.case.forwarded.v1 sent (origin): a refusal answers it
    Column("forwarded_id", String(64)),
)
