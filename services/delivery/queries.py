"""delivery's reads: a case's result, a bundle's results, the 好差评 statistics and e-licence
verification. No writes here (the audit record of a result read is the route's)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Float, Numeric, Select, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from contracts.common import CaseStatus, DeliveryMethod, ResultDocument
from contracts.events import Rating
from contracts.rest import (
    BundleResultsView,
    BundleStatus,
    LicenseStatus,
    LicenseVerification,
    RatingGrouping,
    RatingStatsRow,
    ResultView,
)
from services.common.city import CITY_TZ
from services.common.refusals import Refusal, Refused
from services.delivery import models
from services.delivery.domain.bundles import Member
from services.delivery.domain.cross_region import CrossRegionCase, Role
from services.delivery.domain.results import license_status
from services.delivery.domain.stats import BAD, GOOD, RatedPeriod


def result_not_found(case_id: str) -> Refusal:
    """No result for the case, or none this caller may see: the two answers are the same."""
    return Refusal(
        404,
        "result_not_found",
        "No result for this case yet",
        f"Case {case_id!r} has no result: results are issued once the case is approved "
        "or denied. Check the case status at intake (GET /v1/cases/{case_id}).",
    )


async def load_result(session: AsyncSession, case_id: str, *, lock: bool = False) -> Any:
    """The case's results row (locked for the transaction when `lock`), or `Refused` 404."""
    query = select(models.results).where(models.results.c.case_id == case_id)
    row = (await session.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        raise Refused(result_not_found(case_id))
    return row


async def cross_region_case(session: AsyncSession, case_id: str) -> CrossRegionCase | None:
    """The case's part across regions (DESIGN.md §9), or None for a case of this region alone."""
    t = models.cross_region_cases.c
    row = (
        await session.execute(select(models.cross_region_cases).where(t.case_id == case_id))
    ).first()
    if row is None:
        return None
    return CrossRegionCase(
        case_id=row.case_id,
        partner_city=row.partner_city,
        role=Role(row.role),
        office_code=row.office_code,
        delivery_method=DeliveryMethod(row.delivery_method),
        item_code=row.item_code,
    )


def _local(moment: datetime | None) -> datetime | None:
    return moment.astimezone(CITY_TZ) if moment is not None else None


def result_view(row: Any) -> ResultView:
    local = _local
    issued_at = local(row.issued_at)
    assert issued_at is not None
    return ResultView(
        case_id=row.case_id,
        status=CaseStatus(row.status),
        outcome=row.outcome,
        result=ResultDocument.model_validate(row.result),
        delivery_method=DeliveryMethod(row.delivery_method),
        tracking_number=row.tracking_number,
        pickup_office=row.pickup_office,
        issued_at=issued_at,
        delivered_at=local(row.delivered_at),
        closed_at=local(row.closed_at),
        bundle_id=row.bundle_id,
    )


# -- 好差评 statistics -------------------------------------------------------------------------


def _key(grouping: RatingGrouping) -> ColumnElement[str | None]:
    r = models.ratings.c
    return {
        RatingGrouping.department: r.department,
        RatingGrouping.office: r.intake_office,
        RatingGrouping.level: r.level,
    }[grouping]


def stats_query(grouping: RatingGrouping, period: RatedPeriod) -> Select[*tuple[Any, ...]]:
    """One statement does all the counting (GROUP BY with FILTER): one row per key, sorted by
    key (a null key last), columns named as `RatingStatsRow`."""
    r = models.ratings.c
    key = _key(grouping)
    total = func.count()
    good = func.count().filter(r.rating.in_([g.value for g in GOOD]))
    query = (
        select(
            key.label("key"),
            total.label("total"),
            *(func.count().filter(r.rating == grade.value).label(grade.value) for grade in Rating),
            # total >= 1 in every group, so the division is safe.
            cast(func.round(cast(good, Numeric) / total, 4), Float).label("satisfaction_rate"),
            func.count().filter(r.rating.in_([b.value for b in BAD])).label("bad"),
        )
        .group_by(key)
        .order_by(key.asc().nulls_last())
    )
    if period.since is not None:
        query = query.where(r.rated_at >= period.since)
    if period.until is not None:
        query = query.where(r.rated_at < period.until)
    return query


async def rating_stats(
    session: AsyncSession, grouping: RatingGrouping, period: RatedPeriod
) -> list[RatingStatsRow]:
    """好差评 statistics: counted by PostgreSQL in one statement, one row per key."""
    rows = await session.execute(stats_query(grouping, period))
    return [RatingStatsRow.model_validate(row._mapping) for row in rows]


# -- e-licence verification -------------------------------------------------------------------


async def verify_license(
    session: AsyncSession,
    license_id: str,
    sha256: str | None,
    *,
    discloses: Callable[[Any], bool] = lambda _row: True,
) -> LicenseVerification:
    """valid: the licence exists and, when a sha256 is given, it is the one on record;
    revoked: so, but its decision was revoked (a genuine document that no longer stands).

    An unknown id is a clear answer too (invalid, the other fields null), not an error. The
    case, hash, item and issue time are shown only when `discloses(row)` (the caller may read
    the case, see delivery's api); otherwise the answer is the status alone, the same shape
    as for an unknown id.
    """
    r = models.results.c
    row = (
        await session.execute(
            select(
                r.case_id,
                r.sha256,
                r.item_code,
                r.issued_at,
                r.department,
                r.pickup_office,
                r.intake_office,
                r.revoked_at,
            ).where(r.license_id == license_id)
        )
    ).first()
    genuine = row is not None and (sha256 is None or sha256.lower() == row.sha256)
    status = license_status(genuine=genuine, revoked=row is not None and row.revoked_at is not None)
    valid = status is LicenseStatus.valid
    if row is None or not discloses(row):
        return LicenseVerification(
            license_id=license_id,
            status=status,
            valid=valid,
            case_id=None,
            sha256=None,
            item_code=None,
            issued_at=None,
        )
    return LicenseVerification(
        license_id=license_id,
        status=status,
        valid=valid,
        case_id=row.case_id,
        sha256=row.sha256,
        item_code=row.item_code,
        issued_at=row.issued_at.astimezone(CITY_TZ),
    )


# -- bundles (一件事, DESIGN.md §8) ------------------------------------------------------------


def bundle_not_found(bundle_id: str) -> Refusal:
    """No such bundle here (yet), or none this caller may see: the two answers are the same."""
    return Refusal(
        404,
        "bundle_not_found",
        "No such bundle at delivery",
        f"Bundle {bundle_id!r} is not known to delivery (yet): it learns a bundle from "
        "gov.bundle.submitted.v1. Check the bundle at intake (GET /v1/bundles/{bundle_id}).",
    )


async def load_bundle(session: AsyncSession, bundle_id: str) -> Any:
    """The bundle's row once its members are known, or `Refused` 404."""
    row = (
        await session.execute(select(models.bundles).where(models.bundles.c.bundle_id == bundle_id))
    ).first()
    if row is None or row.bundle_code is None:
        raise Refused(bundle_not_found(bundle_id))
    return row


async def bundle_members(session: AsyncSession, bundle_id: str) -> list[Member]:
    """The members the bundle event listed, in its order, each with its result or its end."""
    m, r = models.bundle_members.c, models.results.c
    rows = await session.execute(
        select(
            m.case_id,
            m.item_code,
            m.ended,
            r.outcome,
            r.result,
            r.status,
            r.department,
            r.issued_at,
            r.revoked_at,
        )
        .select_from(models.bundle_members.outerjoin(models.results, r.case_id == m.case_id))
        .where(m.bundle_id == bundle_id, m.listed)
        .order_by(m.position, m.case_id)
    )
    return [
        Member(
            case_id=row.case_id,
            item_code=row.item_code or "",
            outcome=row.outcome,
            document=ResultDocument.model_validate(row.result) if row.result else None,
            status=CaseStatus(row.status) if row.status else None,
            department=row.department,
            ended=row.ended,
            issued_at=row.issued_at,
            revoked=row.revoked_at is not None,
        )
        for row in rows
    ]


async def bundle_member_departments(session: AsyncSession, bundle_id: str) -> set[str]:
    """The departments deciding the bundle's members (so far): their reviewers may read it."""
    r = models.results.c
    rows = await session.execute(select(r.department).where(r.bundle_id == bundle_id).distinct())
    return set(rows.scalars().all())


async def bundle_results_view(session: AsyncSession, bundle_id: str) -> BundleResultsView:
    bundle = await load_bundle(session, bundle_id)
    members = await bundle_members(session, bundle_id)
    r = models.results
    rows = await session.execute(
        select(r).where(r.c.case_id.in_([m.case_id for m in members if m.has_result]))
    )
    by_case = {row.case_id: row for row in rows}
    method = bundle.delivery_method
    return BundleResultsView(
        bundle_id=bundle_id,
        status=BundleStatus(bundle.status),
        delivery_method=DeliveryMethod(method) if method else None,
        pickup_office=bundle.office_code if method == DeliveryMethod.counter_pickup else None,
        results=[result_view(by_case[m.case_id]) for m in members if m.case_id in by_case],
        ended=[m.case_id for m in members if m.ended and not m.has_result],
        open_members=[m.case_id for m in members if not m.done],
        ready_at=_local(bundle.ready_at),
        delivered_at=_local(bundle.delivered_at),
        closed_at=_local(bundle.closed_at),
    )
