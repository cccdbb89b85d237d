"""routing: owns the catalog, routes every submitted case, keeps the triage queue.

Run: `python -m services.routing` (port 8002).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Body, Depends, Query
from pydantic import Field
from sqlalchemy import select

from contracts.events import INTAKE_TOPIC, CaseSubmitted
from contracts.rest import (
    CatalogVersion,
    RoutePreviewResponse,
    SubmissionRequest,
    TriageEntry,
)
from services.common.auth import Principal, Role, require
from services.common.catalog_follower import CatalogFollower
from services.common.db import unit_of_work
from services.common.envelope import Envelope
from services.common.service import ServiceRuntime, ServiceSettings
from services.common.web import CaseId, Problem, errors
from services.policy.catalog_index import CatalogIndex
from services.routing import handlers, models
from services.routing.topics import DepartmentTopics


class RoutingSettings(ServiceSettings):
    service: str = "routing"
    http_port: int = 8002
    # Bound on creating department topics inline (catalog load, start-up); on failure the
    # background task keeps trying (services.routing.topics).
    department_topics_timeout_s: float = Field(10.0, gt=0)


settings = RoutingSettings()
runtime = ServiceRuntime(settings)
catalogs: CatalogFollower[tuple[int, CatalogIndex]] = runtime.follow_catalog(handlers.build_index)
department_topics = DepartmentTopics(settings, timeout_s=settings.department_topics_timeout_s)


async def _on_submitted(session: Any, envelope: Envelope, payload: CaseSubmitted) -> None:
    await handlers.route_submission(
        session, envelope, payload, runtime=runtime, follower=catalogs, topics=department_topics
    )


async def _ensure_department_topics() -> None:
    """At start-up, the topics of the latest catalog version's departments (a restart heals a
    creation that failed); best effort, the background task retries."""
    version = catalogs.latest_version
    if version is not None:
        await department_topics.ensure(
            handlers.department_codes(catalogs.published[version]), reason="startup"
        )


runtime.consume(
    INTAKE_TOPIC,
    subscriptions={CaseSubmitted: _on_submitted},
)
runtime.on_startup(catalogs.start)
runtime.on_startup(_ensure_department_topics)
runtime.background(catalogs.run, catalogs.stop)
runtime.background(department_topics.run, department_topics.stop)

CurrentPrincipal = Annotated[Principal, Depends(runtime.authenticated)]

app = runtime.create_app(
    title="tongban routing",
    description="Decides which level and department handles a case (DESIGN.md §3).",
)


def _no_catalog() -> Problem:
    """503: routing cannot route before an administrator loads a catalog (intake answers the
    same while its copy is empty)."""
    return Problem(
        503, "no_catalog", "No catalog loaded", "Load one: POST /v1/catalog", retry_after=5
    )


@app.post(
    "/v1/routes/preview",
    response_model=RoutePreviewResponse,
    tags=["routing"],
    responses=errors(400, 401, 403, 413, 422, 503),
)
async def preview(
    application: SubmissionRequest, principal: CurrentPrincipal
) -> RoutePreviewResponse:
    """The route a submission would get now, without creating a case (clerks, operators,
    admins; intake asks on the clerk's behalf)."""
    require(principal, Role.clerk, Role.operator, Role.admin)
    outcome = handlers.decide(
        catalogs,
        CaseSubmitted(case_id="preview", application=application, submitted_at=datetime.now(UTC)),
        version=catalogs.latest_version,
    )
    if outcome is None:
        raise _no_catalog()
    return RoutePreviewResponse(route=outcome.route, failure=outcome.failure, rule=outcome.rule)


@app.get(
    "/v1/triage",
    response_model=list[TriageEntry],
    tags=["routing"],
    responses=errors(401, 403, 422, 503),
)
async def triage(
    principal: CurrentPrincipal, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[TriageEntry]:
    """Cases that could not be routed, newest first: they wait here, never dropped."""
    require(principal, Role.operator, Role.admin)
    routes = models.routes
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(routes)
            .where(routes.c.status == "route_failed")
            .order_by(routes.c.decided_at.desc())
            .limit(limit)
        )
        return [
            TriageEntry(
                case_id=r.case_id,
                item_code=r.item_code,
                failure=r.failure,
                rule=r.rule,
                catalog_version=r.catalog_version,
                failed_at=r.decided_at,
            )
            for r in rows
        ]


@app.post(
    "/v1/triage/{case_id}/retry",
    response_model=RoutePreviewResponse,
    tags=["routing"],
    responses=errors(401, 403, 404, 409, 422, 503),
)
async def retry(case_id: CaseId, principal: CurrentPrincipal) -> RoutePreviewResponse:
    """Route a failed case again, typically after a catalog fix.

    The case's stored application and submission time are routed by the catalog version in
    force NOW (not the one in force at the submission: the operator retries because the catalog
    was fixed since). The new outcome is emitted as `gov.case.routed.v1` (the case goes on to
    approval) or `gov.case.route_failed.v1` (it stays in triage), in the same transaction as the
    route's update; concurrent retries of one case are serialised by a row lock.
    """
    require(principal, Role.operator, Role.admin)
    try:
        async with unit_of_work(runtime.sessions) as session:
            outcome = await handlers.retry_route(
                session, case_id, runtime=runtime, follower=catalogs, topics=department_topics
            )
    except handlers.CaseNotFound:
        raise Problem(
            404, "case_not_found", "No such case", f"routing has no case {case_id!r}"
        ) from None
    except handlers.NotInTriage as not_failed:
        raise Problem(
            409,
            "not_in_triage",
            "The case is not in triage",
            f"case {case_id!r} is {not_failed.status}; only a route_failed case can be retried",
        ) from None
    except handlers.NoCatalog:
        raise _no_catalog() from None
    return RoutePreviewResponse(route=outcome.route, failure=outcome.failure, rule=outcome.rule)


@app.post(
    "/v1/catalog",
    response_model=CatalogVersion,
    status_code=201,
    tags=["catalog"],
    responses=errors(400, 401, 403, 413, 422, 503),
)
async def load_catalog(
    raw: Annotated[dict[str, Any], Body()], principal: CurrentPrincipal
) -> CatalogVersion:
    """Load a whole catalog (the catalog file as JSON) as the next version.

    After the commit, the Kafka topic of every department in it (`dept.<code>.cases.v1`) is
    created if missing; when the broker cannot create them now, the load still stands and
    routing keeps trying in the background (logged)."""
    require(principal, Role.admin)
    try:
        async with unit_of_work(runtime.sessions) as session:
            published = await handlers.load_catalog(session, raw, runtime=runtime)
    except handlers.CatalogRefused as refused:
        raise Problem(
            422,
            "invalid_catalog",
            "The catalog is refused whole",
            f"{len(refused.problems)} problem(s); the version in force stays. Fix them all "
            "and load again.",
            errors=refused.problems,
        ) from None
    catalogs.apply(published)  # this process routes by it at once; others follow catalog.v1
    await department_topics.ensure(handlers.department_codes(published), reason="catalog_load")
    return _version_view(published.version)


@app.get(
    "/v1/catalog/version",
    response_model=CatalogVersion,
    tags=["catalog"],
    responses=errors(401, 404, 503),
)
async def catalog_version(principal: CurrentPrincipal) -> CatalogVersion:
    version = catalogs.latest_version
    if version is None:
        raise Problem(404, "no_catalog", "No catalog loaded", "Load one: POST /v1/catalog")
    return _version_view(version)


def _version_view(version: int) -> CatalogVersion:
    published = catalogs.published[version]
    catalog = published.catalog
    return CatalogVersion(
        version=version,
        loaded_at=published.loaded_at,
        city=str(catalog["city"]["code"]),
        items=len(catalog["items"]),
    )
