"""intake's tables (schema `intake`): cases as the counter sees them, their timeline, and
intake's copy of the licence library (`license.v1`)."""

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
    # 0008: a member of a bundle (一件事, DESIGN.md §8): its bundle, and the members (case ids)
    # it waits for while `waiting`.
    Column("bundle_id", String(64)),
    # approved | denied, as its decision event said (the status alone loses it once the
    # result is issued, and the result may be applied first): a prerequisite's standing (§8)
    Column("decision", String(16)),
    Column("bundle_code", String(64)),
    Column("after", JSONB, nullable=False, server_default="[]"),
)
Index("ix_cases_office", cases.c.office_code, cases.c.created_at)
Index("ix_cases_bundle", cases.c.bundle_id)
# Migration 0005 also indexes the applicant's ID number (upper, trimmed) of the cases: who a
# clerk may look up in the licence library. It is not declared here because migration 0002
# creates `cases` from this metadata, and would then create it before 0005 does.

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

# intake's copy of the licence library (DESIGN.md §7), one row per licence, from
# gov.license.issued.v1 and gov.license.revoked.v1. The topic is compacted and read by a group
# of its own, so a revocation may come first: its row then holds only the revocation (type,
# holder and issue null) and the issue, when it comes, fills in the rest and stays revoked.
licenses = Table(
    "licenses",
    metadata,
    Column("license_id", String(128), primary_key=True),
    Column("license_type", String(64)),
    Column("holder_id_number", String(64)),  # trimmed, upper case (domain.licenses.holder_key)
    Column("case_id", String(64), nullable=False),  # the case that issued it
    Column("item_code", String(64)),
    Column("issued_at", DateTime(timezone=True)),
    Column("sha256", String(64)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("revoke_reason", Text),
)
Index("ix_licenses_holder", licenses.c.holder_id_number, licenses.c.license_type)

# Applicants barred from commitments (告知承诺, DESIGN.md §7): one row per case whose decision
# was revoked for a breached commitment (gov.case.revoked.v1), with its applicant as a holder
# (trimmed, upper case, as the licence library keys them).
barred_holders = Table(
    "barred_holders",
    metadata,
    Column("case_id", String(64), primary_key=True),
    Column("holder_id_number", String(64), nullable=False),
    Column("barred_at", DateTime(timezone=True), nullable=False),
)
Index("ix_barred_holders_holder", barred_holders.c.holder_id_number)

# Bundles (一件事一次办, DESIGN.md §8): one row per bundle taken here. Its members are rows of
# `cases` with its `bundle_id`; its status moves with bundle.v1 (delivered, closed from
# delivery) and with a withdrawal here. A member's release or ending locks this row first, so
# the consumers and the requests touching one bundle take their turns.
bundles = Table(
    "bundles",
    metadata,
    Column("bundle_id", String(64), primary_key=True),
    Column("bundle_code", String(64), nullable=False),
    Column("bundle_name", Text, nullable=False),
    Column("status", String(32), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("office_code", String(64)),
    Column("applicant", JSONB, nullable=False),
    Column("answers", JSONB, nullable=False),
    Column("delivery", JSONB, nullable=False),
    Column("excluded", JSONB, nullable=False),
    Column("time_limit_days", Integer, nullable=False),
    Column("lead", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
Index("ix_bundles_office", bundles.c.office_code, bundles.c.created_at)

# The bundle's own events (bundle.v1), for its one timeline beside its members' events.
bundle_timeline = Table(
    "bundle_timeline",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("bundle_id", String(64), nullable=False),
    Column("type", String(128), nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("source", String(128), nullable=False),
    Column("data", JSONB),
)
Index("ix_bundle_timeline_bundle", bundle_timeline.c.bundle_id, bundle_timeline.c.time)

# Idempotency-Key of `POST /v1/bundles`: as `idempotency_keys` for cases, its own table so a
# key's stored answer is always of the one kind.
bundle_keys = Table(
    "bundle_keys",
    metadata,
    Column("key", String(256), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("bundle_id", String(64), nullable=False),
    Column("response", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Across regions (跨省通办, DESIGN.md §9). A case adopted from a partner region (forwarded to
# this one): its origin, so the origin's relayed steps of it are imported, and a second
# forwarded of it is a no-op. Its counter view is an ordinary row of `cases`.
adopted_cases = Table(
    "adopted_cases",
    metadata,
    Column("case_id", String(64), primary_key=True),
    Column("origin_city", String(32), nullable=False),
    Column("origin_office", String(64)),
    Column("forwarded_event_id", Text, nullable=False),
    Column("adopted_at", DateTime(timezone=True), nullable=False),
)

# A forwarded case this region did not adopt (gov.case.adoption_refused.v1 went back to its
# origin), one row per forwarded event: `GET /v1/xregion/refused` for operators.
adoption_refusals = Table(
    "adoption_refusals",
    metadata,
    Column("event_id", Text, primary_key=True),  # inbox_key of the forwarded event's ce_id
    Column("case_id", String(64), nullable=False),
    Column("from_city", String(32), nullable=False),
    Column("item_code", String(64), nullable=False),
    Column("code", String(32), nullable=False),
    Column("reason", Text, nullable=False),
    Column("refused_at", DateTime(timezone=True), nullable=False),
)
Index("ix_adoption_refusals_refused_at", adoption_refusals.c.refused_at)
