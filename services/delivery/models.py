"""delivery's tables (schema `delivery`): one result per case (with its e-licence, which the
licence library on `license.v1` announces and revokes), one rating per case.

A rating is bound to its case and carries the result's intake office, deciding department and
that department's level, so the 好差评 statistics group ratings without a join.

A bundle (一件事, DESIGN.md §8) is delivered once: its members' results carry `bundle_id` and
wait (`result_issued`) until every member has a result or has ended; `bundles` holds the one
delivery, pickup and rating, `bundle_members` the members listed and those that ended.

A case across regions (DESIGN.md §9) has a row in `cross_region_cases`: at the origin its
counter_pickup result is a results row made from the partner's issued result; at the handler
its counter_pickup result waits at the origin office and is closed by the origin's pickup."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Sequence,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(schema="delivery")

# Serial numbers of postal tracking numbers (results.tracking_number formats them).
tracking_serial = Sequence("tracking_serial", metadata=metadata, start=1)

results = Table(
    "results",
    metadata,
    Column("case_id", String(64), primary_key=True),
    Column("outcome", String(16), nullable=False),  # approved | denied
    Column("status", String(16), nullable=False),  # result_issued | delivered | closed
    Column("item_code", String(64), nullable=False),
    Column("result", JSONB, nullable=False),  # contracts.common.ResultDocument
    Column("license_id", String(128), unique=True),  # e-licences only
    Column("sha256", String(64), nullable=False),
    Column("content", JSONB, nullable=False),  # the content the sha256 is computed over
    Column("delivery_method", String(16), nullable=False),
    Column("address", String(500)),
    # Postal only; unique among single cases (members share their bundle's parcel).
    Column("tracking_number", String(32)),
    Column("pickup_office", String(64)),  # counter_pickup only: the intake office
    Column("intake_office", String(64)),
    Column("department", String(64), nullable=False),  # the deciding department
    Column("level", String(16)),  # its level (municipal | district | street); null before 0003
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True)),
    Column("closed_at", DateTime(timezone=True)),
    # The licence library (DESIGN.md §7): the e-licence's type (null: untyped or no licence),
    # and the revocation of the decision (gov.case.revoked.v1), which revokes its licence.
    Column("license_type", String(64)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("revoke_reason", String(64)),
    Column("bundle_id", String(64)),  # a member's: delivered with its bundle
)
Index(
    "ux_results_tracking_number",
    results.c.tracking_number,
    unique=True,
    postgresql_where=results.c.bundle_id.is_(None),
)
Index("ix_results_bundle", results.c.bundle_id)
# The counter's pickup shelf: results waiting at an office.
Index(
    "ix_results_waiting_pickup",
    results.c.pickup_office,
    results.c.issued_at,
    postgresql_where=results.c.status == "result_issued",
)

ratings = Table(
    "ratings",
    metadata,
    Column("case_id", String(64), ForeignKey("delivery.results.case_id"), primary_key=True),
    Column("rating", String(32), nullable=False),
    Column("comment", Text),
    Column("item_code", String(64), nullable=False),
    Column("department", String(64), nullable=False),
    Column("intake_office", String(64)),
    Column("level", String(16)),  # the deciding department's level, copied from the result
    Column("rated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_ratings_department", ratings.c.department, ratings.c.rated_at)
Index("ix_ratings_rated_at", ratings.c.rated_at)

# One row per bundle, upserted by whichever event or request about it comes first and then
# locked (FOR UPDATE): so the check "every member has a result or has ended" runs under one
# lock and the bundle is delivered exactly once, whatever order its events arrive in.
bundles = Table(
    "bundles",
    metadata,
    Column("bundle_id", String(64), primary_key=True),
    Column("bundle_code", String(64)),  # null until gov.bundle.submitted.v1 arrives
    Column("status", String(16), nullable=False, server_default="in_progress"),  # BundleStatus
    Column("delivery_method", String(16)),
    Column("address", String(500)),
    Column("office_code", String(64)),  # the intake office: where a pickup bundle waits
    Column("channel", String(16)),
    Column("submitted_at", DateTime(timezone=True)),
    Column("ready_at", DateTime(timezone=True)),  # every member has a result or has ended
    Column("tracking_number", String(32), unique=True),  # postal: the one parcel
    Column("delivered_at", DateTime(timezone=True)),
    Column("closed_at", DateTime(timezone=True)),
    Column("rating", String(32)),
    Column("rated_at", DateTime(timezone=True)),
)

bundle_members = Table(
    "bundle_members",
    metadata,
    Column("case_id", String(64), primary_key=True),
    Column("bundle_id", String(64), nullable=False),
    Column("item_code", String(64)),
    Column("position", Integer),  # its place in the bundle event's list
    Column("listed", Boolean, nullable=False, server_default="false"),  # by the bundle event
    Column("ended", String(16)),  # withdrawn | terminated: ended without a result
    Column("ended_at", DateTime(timezone=True)),
    Column("ended_reason", String(64)),
)
Index("ix_bundle_members_bundle", bundle_members.c.bundle_id)

# Cases across regions (跨省通办, DESIGN.md §9; domain.cross_region): this region's part in each
# (`origin`: taken at its counter, decided by the partner; `handler`: adopted from the partner),
# the partner's city code, the origin office (where a counter_pickup result is handed over) and
# the delivery chosen there. Written from the origin's routed event or the adopted case's
# submitted event.
# A partner's issued result that came before this region's routed event of the case (§9).
partner_results_waiting = Table(
    "partner_results_waiting",
    metadata,
    Column("case_id", String(64), primary_key=True),
    Column("issued", JSONB, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)

cross_region_cases = Table(
    "cross_region_cases",
    metadata,
    Column("case_id", String(64), primary_key=True),
    Column("partner_city", String(16), nullable=False),
    Column("role", String(16), nullable=False),  # origin | handler
    Column("office_code", String(64)),
    Column("delivery_method", String(16), nullable=False),
    Column("item_code", String(64), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)
