"""delivery's REST routes: parse, check the caller's role and scope, call a handler or a query.
Refusals become problem JSON at this edge (services.common.refusals)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request

from contracts.common import Code
from contracts.events import BundleRated, CaseRated
from contracts.rest import (
    BundleResultsView,
    LicenseVerification,
    PickupRequest,
    RatingGrouping,
    RatingRequest,
    RatingStatsRow,
    ResultView,
)
from services.common.auth import CurrentPrincipal, Principal, Role, in_scope, require
from services.common.db import unit_of_work
from services.common.service import service_parts
from services.common.web import CaseId, errors, problem_of
from services.delivery import handlers, queries
from services.delivery.domain.stats import parse_grouping, rated_period
from services.delivery.handlers import Delivery

DeliveryDep = Annotated[Delivery, Depends(service_parts)]
BundleId = Annotated[Code, Path(min_length=1, max_length=64, description="the bundle id")]
router = APIRouter()

OVERSEERS = (Role.operator, Role.admin)


def _office_scope(row: Any) -> str:
    """The office that took the case (and, but for a case adopted from a partner region,
    hands the result over, DESIGN.md §9); online cases: `online`."""
    return str(row.intake_office or row.pickup_office or "online")


def _reads_result(principal: Principal, row: Any) -> bool:
    """The office that took the case, the deciding department, operators and admins. Anyone
    else is answered as if the case had no result (404), so an id tells them nothing."""
    if principal.role in OVERSEERS:
        return True
    if principal.role is Role.reviewer:
        return in_scope(principal, row.department, exempt=())
    return principal.role is Role.clerk and in_scope(principal, _office_scope(row), exempt=())


async def _clerk_of_the_office(principal: Principal, case_id: str, delivery: Delivery) -> None:
    """Only a clerk of the office that took the case hands its result over or takes its
    rating: other roles get 403 whether or not the case exists, clerks of other offices the
    404 of a case without a result."""
    require(principal, Role.clerk)
    async with delivery.runtime.sessions() as session:
        row = await queries.load_result(session, case_id)
    if not in_scope(principal, _office_scope(row), exempt=()):
        raise problem_of(queries.result_not_found(case_id))


@router.get(
    "/v1/results/{case_id}",
    tags=["results"],
    responses=errors(401, 403, 404, 422, 503),
)
async def get_result(
    case_id: CaseId, principal: CurrentPrincipal, delivery: DeliveryDep
) -> ResultView:
    """A case's result and how far its delivery has come: for the office that took the case,
    the deciding department, operators and admins (every read is audited)."""
    async with unit_of_work(delivery.runtime.sessions) as session:
        row = await queries.load_result(session, case_id)
        if not _reads_result(principal, row):
            raise problem_of(queries.result_not_found(case_id))
        await delivery.runtime.audit(session, principal, "result.read", case_id)
        return queries.result_view(row)


@router.post(
    "/v1/cases/{case_id}/pickup",
    tags=["results"],
    responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
)
async def pickup(
    case_id: CaseId,
    request: Request,
    principal: CurrentPrincipal,
    delivery: DeliveryDep,
    body: Annotated[PickupRequest | None, Body()] = None,
) -> ResultView:
    """The applicant collects a `counter_pickup` result at the office that took the
    application (a clerk of that office hands it over): delivered, and the case closed. A
    bundle's member is refused 409 `bundle_member`: it goes with its bundle's pickup; a case
    adopted from a partner region 409 `pickup_at_origin`: it is collected at the office that
    took it there (DESIGN.md §9)."""
    await _clerk_of_the_office(principal, case_id, delivery)
    async with unit_of_work(delivery.runtime.sessions) as session:
        return await handlers.pickup(
            session,
            delivery=delivery,
            case_id=case_id,
            office_code=body.office_code if body else None,
            traceparent=request.headers.get("traceparent"),
        )


@router.post(
    "/v1/cases/{case_id}/rating",
    status_code=201,
    tags=["ratings"],
    responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
)
async def rate(
    case_id: CaseId,
    body: RatingRequest,
    request: Request,
    principal: CurrentPrincipal,
    delivery: DeliveryDep,
) -> CaseRated:
    """The applicant's one rating of the case (好差评, 一事一评), after delivery, entered at
    the office that took the case (or the online channel). A bundle's member is refused 409
    `bundle_member`: the bundle takes one rating."""
    await _clerk_of_the_office(principal, case_id, delivery)
    async with unit_of_work(delivery.runtime.sessions) as session:
        return await handlers.rate(
            session,
            delivery=delivery,
            case_id=case_id,
            rating=body.rating,
            comment=body.comment,
            traceparent=request.headers.get("traceparent"),
        )


@router.get(
    "/v1/ratings/stats",
    tags=["ratings"],
    responses=errors(401, 403, 422, 503),
)
async def rating_stats(
    by: Annotated[
        str,
        Query(
            description="group by the deciding department, the intake office or the level",
            json_schema_extra={"enum": [g.value for g in RatingGrouping]},
        ),
    ] = RatingGrouping.department.value,
    from_: Annotated[
        date | None,
        Query(alias="from", description="first day of rated_at, city-local date (included)"),
    ] = None,
    to: Annotated[
        date | None, Query(description="last day of rated_at, city-local date (included)")
    ] = None,
    *,
    principal: CurrentPrincipal,
    delivery: DeliveryDep,
) -> list[RatingStatsRow]:
    """好差评 statistics: per key, the ratings at each of the five levels, the satisfaction
    rate (very_satisfied + satisfied over total) and the bad ones (差评), sorted by key.

    422 `invalid_grouping` for an unknown `by`; 422 `invalid_period` when `from` is after `to`.
    """
    require(principal, *OVERSEERS)
    grouping = parse_grouping(by)
    period = rated_period(from_, to)
    async with delivery.runtime.sessions() as session:
        return await queries.rating_stats(session, grouping, period)


@router.get(
    "/v1/licenses/{license_id}/verify",
    tags=["licenses"],
    responses=errors(401, 422, 503),
)
async def verify_license(
    license_id: Annotated[Code, Path(min_length=1, max_length=128)],
    sha256: Annotated[
        str | None,
        Query(pattern=r"^[0-9a-fA-F]{64}$", description="the hash the holder presented"),
    ] = None,
    *,
    principal: CurrentPrincipal,
    delivery: DeliveryDep,
) -> LicenseVerification:
    """Is this e-licence genuine? Always 200: `status` is `invalid` (and `valid` false) for an
    unknown id or a sha256 that is not the one on record, `revoked` (and `valid` false) for a
    genuine licence whose decision was revoked, so a verifier gets a clear answer either
    way. Only a caller who may read the licence's case (its office, its deciding
    department, operators, admins) also gets its case id, hash, item and issue time; to
    anyone else those are null, exactly as for an unknown id."""
    async with delivery.runtime.sessions() as session:
        return await queries.verify_license(
            session, license_id, sha256, discloses=lambda row: _reads_result(principal, row)
        )


# -- bundles (一件事, DESIGN.md §8) ------------------------------------------------------------


async def _clerk_of_the_bundle(principal: Principal, bundle_id: str, delivery: Delivery) -> None:
    """Only a clerk of the office that took the bundle hands its results over or takes its
    rating; as for a case, other roles get 403, clerks of other offices a 404."""
    require(principal, Role.clerk)
    async with delivery.runtime.sessions() as session:
        row = await queries.load_bundle(session, bundle_id)
    if not in_scope(principal, str(row.office_code or "online"), exempt=()):
        raise problem_of(queries.bundle_not_found(bundle_id))


@router.get(
    "/v1/bundles/{bundle_id}/results",
    tags=["bundles"],
    responses=errors(401, 403, 404, 422, 503),
)
async def get_bundle_results(
    bundle_id: BundleId, principal: CurrentPrincipal, delivery: DeliveryDep
) -> BundleResultsView:
    """Every member's result and how far the bundle's one delivery has come (the members
    still open, those ended without a result): for the office that took the bundle, the
    members' deciding departments, operators and admins (every read is audited)."""
    async with unit_of_work(delivery.runtime.sessions) as session:
        row = await queries.load_bundle(session, bundle_id)
        if principal.role in OVERSEERS:
            allowed = True
        elif principal.role is Role.reviewer:
            departments = await queries.bundle_member_departments(session, bundle_id)
            allowed = any(in_scope(principal, d, exempt=()) for d in departments)
        else:
            allowed = principal.role is Role.clerk and in_scope(
                principal, str(row.office_code or "online"), exempt=()
            )
        if not allowed:
            raise problem_of(queries.bundle_not_found(bundle_id))
        await delivery.runtime.audit(
            session, principal, "bundle.results.read", None, {"bundle_id": bundle_id}
        )
        return await queries.bundle_results_view(session, bundle_id)


@router.post(
    "/v1/bundles/{bundle_id}/pickup",
    tags=["bundles"],
    responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
)
async def pickup_bundle(
    bundle_id: BundleId,
    request: Request,
    principal: CurrentPrincipal,
    delivery: DeliveryDep,
    body: Annotated[PickupRequest | None, Body()] = None,
) -> BundleResultsView:
    """One pickup for a `counter_pickup` bundle, once every member has its result or has
    ended (409 `bundle_not_ready` before): every result handed over at once at the office
    that took the bundle, the members and the bundle closed."""
    await _clerk_of_the_bundle(principal, bundle_id, delivery)
    async with unit_of_work(delivery.runtime.sessions) as session:
        return await handlers.pickup_bundle(
            session,
            delivery=delivery,
            bundle_id=bundle_id,
            office_code=body.office_code if body else None,
            traceparent=request.headers.get("traceparent"),
        )


@router.post(
    "/v1/bundles/{bundle_id}/rating",
    status_code=201,
    tags=["bundles"],
    responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
)
async def rate_bundle(
    bundle_id: BundleId,
    body: RatingRequest,
    request: Request,
    principal: CurrentPrincipal,
    delivery: DeliveryDep,
) -> BundleRated:
    """The applicant's one rating of the bundle (好差评), after its delivery: counted for
    each member's deciding department (a bad one opens a follow-up at each)."""
    await _clerk_of_the_bundle(principal, bundle_id, delivery)
    async with unit_of_work(delivery.runtime.sessions) as session:
        return await handlers.rate_bundle(
            session,
            delivery=delivery,
            bundle_id=bundle_id,
            rating=body.rating,
            comment=body.comment,
            traceparent=request.headers.get("traceparent"),
        )
