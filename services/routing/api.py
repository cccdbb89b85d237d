"""routing's REST routes: parse, check the caller's role, call a handler or a query. Refusals
become problem JSON at this edge (services.common.refusals)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query

from contracts.events import CaseSubmitted
from contracts.rest import CatalogVersion, RoutePreviewResponse, SubmissionRequest, TriageEntry
from services.common.auth import CurrentPrincipal, Role, require
from services.common.db import unit_of_work
from services.common.service import service_parts
from services.common.web import CaseId, errors, problem_of
from services.routing import handlers, queries
from services.routing.handlers import Routing

RoutingDep = Annotated[Routing, Depends(service_parts)]
router = APIRouter()


@router.post(
    "/v1/routes/preview",
    tags=["routing"],
    responses=errors(400, 401, 403, 413, 422, 503),
)
async def preview(
    application: SubmissionRequest, principal: CurrentPrincipal, routing: RoutingDep
) -> RoutePreviewResponse:
    """The route a submission would get now, without creating a case (clerks, operators,
    admins; intake asks on the clerk's behalf): a partner region's applicant's too (§9), read
    in that partner's newest catalog."""
    require(principal, Role.clerk, Role.operator, Role.admin)
    outcome = handlers.decide(
        routing.catalogs,
        CaseSubmitted(
            case_id="preview", application=application, submitted_at=routing.runtime.clock.now()
        ),
        version=routing.catalogs.latest_version,
        partners=routing.partner_catalogs(),
    )
    if outcome is None:
        # routing cannot route before an administrator loads a catalog (intake answers the
        # same while its copy is empty)
        raise problem_of(handlers.NO_CATALOG_LOADED)
    return RoutePreviewResponse(route=outcome.route, failure=outcome.failure, rule=outcome.rule)


@router.get(
    "/v1/triage",
    tags=["routing"],
    responses=errors(401, 403, 422, 503),
)
async def triage(
    principal: CurrentPrincipal,
    routing: RoutingDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[TriageEntry]:
    """Cases that could not be routed, newest first: they wait here, never dropped."""
    require(principal, Role.operator, Role.admin)
    async with routing.runtime.sessions() as session:
        return await queries.triage(session, limit=limit)


@router.post(
    "/v1/triage/{case_id}/retry",
    tags=["routing"],
    responses=errors(401, 403, 404, 409, 422, 503),
)
async def retry(
    case_id: CaseId, principal: CurrentPrincipal, routing: RoutingDep
) -> RoutePreviewResponse:
    """Route a failed case again, typically after a catalog fix.

    The case's stored application and submission time are routed by the catalog version in
    force NOW (not the one in force at the submission: the operator retries because the catalog
    was fixed since). The new outcome is emitted as `gov.case.routed.v1` (the case goes on to
    approval) or `gov.case.route_failed.v1` (it stays in triage), in the same transaction as the
    route's update; concurrent retries of one case are serialised by a row lock.
    """
    require(principal, Role.operator, Role.admin)
    async with unit_of_work(routing.runtime.sessions) as session:
        outcome = await handlers.retry_route(session, case_id, routing=routing)
    return RoutePreviewResponse(route=outcome.route, failure=outcome.failure, rule=outcome.rule)


@router.post(
    "/v1/catalog",
    status_code=201,
    tags=["catalog"],
    responses=errors(400, 401, 403, 413, 422, 503),
)
async def load_catalog(
    raw: Annotated[dict[str, Any], Body()], principal: CurrentPrincipal, routing: RoutingDep
) -> CatalogVersion:
    """Load a whole catalog (the catalog file as JSON) as the next version.

    After the commit, the Kafka topic of every department in it (`dept.<code>.cases.v1`) is
    created if missing; when the broker cannot create them now, the load still stands and
    routing keeps trying in the background (logged)."""
    require(principal, Role.admin)
    async with unit_of_work(routing.runtime.sessions) as session:
        published = await handlers.load_catalog(session, raw, runtime=routing.runtime)
    routing.catalogs.apply(published)  # this process routes by it at once; others follow
    await routing.topics.ensure(handlers.department_codes(published), reason="catalog_load")
    return queries.catalog_version(routing.catalogs, published.version)


@router.get(
    "/v1/catalog/version",
    tags=["catalog"],
    responses=errors(401, 404, 503),
)
async def catalog_version(principal: CurrentPrincipal, routing: RoutingDep) -> CatalogVersion:
    return queries.catalog_version(routing.catalogs)
