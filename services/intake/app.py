"""intake: the counter's (and online channel's) door. Takes applications, refuses at once what
it can see is wrong, and answers for a case's whole story from every case topic.

Run: `python -m services.intake` (port 8001).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from sqlalchemy import select

from contracts.catalog import Catalog
from contracts.common import Applicant, CaseStatus, Failure, Route, TimelineEntry
from contracts.events import CASE_TOPICS, EVENT_TYPES, CatalogPublished
from contracts.rest import (
    CaseView,
    ItemView,
    MaterialsRequest,
    SubmissionRequest,
    SubmissionResponse,
    WithdrawRequest,
)
from services.common.auth import Principal, authenticated
from services.common.catalog_follower import CatalogFollower
from services.common.city import CITY_TZ
from services.common.db import unit_of_work
from services.common.handover import load_keys
from services.common.limits import RateLimiter, rate_limited
from services.common.logs import get_logger, mask_personal_data
from services.common.service import ServiceRuntime, ServiceSettings
from services.common.web import CaseId, Problem, dependency_unavailable, errors
from services.intake import access, handlers, models
from services.intake.problems import refusal_problem
from services.intake.validation import validate_submission
from services.policy.catalog_index import CatalogIndex
from services.policy.intake_rules import effective_intake_levels
from services.policy.routing_rules import route_case


class IntakeSettings(ServiceSettings):
    service: str = "intake"
    http_port: int = 8001


log = get_logger(__name__)
settings = IntakeSettings()
runtime = ServiceRuntime(settings)


def _index(published: CatalogPublished) -> CatalogIndex:
    return CatalogIndex(Catalog.model_validate(published.catalog))


catalogs: CatalogFollower[CatalogIndex] = runtime.follow_catalog(_index)


async def _load_handover_keys() -> None:
    """Fail at startup, with what to set, when production has no signing keys."""
    load_keys(settings)


runtime.consume(
    *CASE_TOPICS,
    name="intake-timeline",
    batch_handler=handlers.follow_case_events,
    subscriptions={
        spec.model: handlers.follow_case_event
        for spec in EVENT_TYPES.values()
        if spec.topic in CASE_TOPICS
    },
)
runtime.on_startup(_load_handover_keys)
runtime.on_startup(catalogs.start)
runtime.background(catalogs.run, catalogs.stop)

app = runtime.create_app(
    title="tongban intake",
    description="Counter and online intake of government-service cases (DESIGN.md §4).",
)
CurrentPrincipal = Annotated[Principal, Depends(authenticated)]
# Per client (token subject): a counter terminal stuck in a loop must not starve the others.
limiter = RateLimiter.from_settings(settings)


def _catalog() -> CatalogIndex:
    index = catalogs.latest
    if index is None:
        raise Problem(
            503,
            "no_catalog",
            "No catalog is in force yet",
            "An administrator must load the catalog (tongban catalog load FILE).",
            retry_after=5,
        )
    return index


def _route_preview(
    index: CatalogIndex, application: SubmissionRequest, today: date
) -> Route | None:
    """The routing rules of `services.policy` (pure, the very code routing decides by) on this
    process's copy of the catalog: the same answer routing will give, at no network cost, and
    never a reason to keep a person waiting at the counter."""
    version = catalogs.latest_version
    if version is None:
        return None
    try:
        outcome = route_case(
            index, catalog_version=version, application=application, submitted_on=today
        )
    except Exception as exc:  # a preview is a nicety: the case is taken anyway
        log.warning("route preview failed", error=repr(exc))
        return None
    return outcome.route


@app.post(
    "/v1/cases",
    response_model=SubmissionResponse,
    status_code=201,
    tags=["cases"],
    dependencies=[Depends(rate_limited(limiter, after=authenticated))],
    # OpenAPI links: what a client (or a stateful test) can do next with the new case.
    responses={
        **errors(400, 401, 403, 409, 413, 422, 429, 503),
        201: {
            "links": {
                name: {
                    "operationId": operation,
                    "parameters": {"case_id": "$response.body#/case_id"},
                }
                for name, operation in (
                    ("GetCase", "get_case_v1_cases__case_id__get"),
                    ("AddMaterials", "add_materials_v1_cases__case_id__materials_post"),
                    ("Withdraw", "withdraw_v1_cases__case_id__withdraw_post"),
                )
            }
        },
    },
)
async def submit(
    application: SubmissionRequest,
    request: Request,
    principal: CurrentPrincipal,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> SubmissionResponse:
    """Take an application (clerks, at their own office; the online channel's scope is
    `online`). Missing required materials: the case waits as `awaiting_supplement` with one
    notification listing all of them."""
    access.may_submit(principal, application)
    digest = handlers.request_hash(application)
    index = _catalog()
    today = datetime.now(CITY_TZ).date()
    result = validate_submission(index, application, today=today)
    problem = refusal_problem(result)
    if problem is not None:
        # A retry of a case taken before the catalog changed still gets its case back.
        replay = await _replay(idempotency_key, digest)
        if replay is not None:
            return replay
        raise problem
    preview = None if result.missing_materials else _route_preview(index, application, today)
    case_id = handlers.new_case_id(index.catalog.city.code, today)
    try:
        # One transaction: the case, its events, the key. A key already stored (a retry) is
        # found by the key's own insert, which rolls the whole transaction back: no read of
        # the key before every submission.
        async with unit_of_work(runtime.sessions) as session:
            return await handlers.create_case(
                session,
                runtime=runtime,
                application=application,
                case_id=case_id,
                missing=list(result.missing_materials),
                route_preview=preview,
                idempotency_key=idempotency_key or None,
                digest=digest,
                handover_keys=load_keys(settings),
                traceparent=request.headers.get("traceparent"),
            )
    except handlers.KeyAlreadyUsed:
        replay = await _replay(idempotency_key, digest)
        if replay is None:  # keys are never deleted: only if the database lost the row
            raise dependency_unavailable() from None
        return replay


async def _replay(idempotency_key: str | None, digest: str) -> SubmissionResponse | None:
    if not idempotency_key:
        return None
    async with runtime.sessions() as session:
        return await handlers.replay_idempotent(session, idempotency_key, digest)


@app.get(
    "/v1/cases/{case_id}",
    response_model=CaseView,
    tags=["cases"],
    responses=errors(401, 403, 404, 422, 503),
)
async def get_case(case_id: CaseId, principal: CurrentPrincipal) -> CaseView:
    """Status, route, deadline and the whole timeline from every case topic. Clerks read their
    office's cases, reviewers their department's; operators and admins read every case with
    the applicant's personal data masked. Every read is on the audit trail."""
    return await _case_view(case_id, principal)


async def _case_view(case_id: str, principal: Principal) -> CaseView:
    # The case row and its timeline from one snapshot: under READ COMMITTED each statement
    # sees its own, and a timeline batch committing between the two reads showed a status
    # older than the events listed (an `accepted` case as `routed`).
    async with runtime.sessions() as session:
        await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        case = await handlers.load_case(session, case_id)
        if not access.reads(
            principal, case.office_code, case.channel, (case.route or {}).get("handled_by")
        ):
            raise handlers.case_not_found(case_id)
        entries = await session.execute(
            select(models.timeline)
            .where(models.timeline.c.case_id == case_id)
            .order_by(models.timeline.c.time, models.timeline.c.event_id)
        )
        timeline = [
            TimelineEntry(type=e.type, time=e.time.astimezone(CITY_TZ), source=e.source)
            for e in entries
        ]
    clear = access.sees_personal_data(principal)
    # The audit trail's chain is appended under its lock in a transaction of its own (a
    # REPEATABLE READ snapshot could predate the chain's tail); no view leaves unaudited.
    async with unit_of_work(runtime.sessions) as session:
        await runtime.audit(
            session,
            principal,
            "case.read",
            case_id,
            {"personal_data": "clear" if clear else "masked"},
        )
    return CaseView(
        case_id=case.case_id,
        status=CaseStatus(case.status),
        item_code=case.item_code,
        channel=case.channel,
        office_code=case.office_code,
        route=Route.model_validate(case.route) if case.route else None,
        failure=Failure.model_validate(case.failure) if case.failure else None,
        deadline=case.deadline,
        missing_materials=list(case.missing_materials),
        timeline=timeline,
        applicant=_applicant_view(case.application["applicant"], clear),
    )


def _applicant_view(applicant: dict[str, Any], clear: bool) -> Applicant:
    return Applicant.model_validate(applicant if clear else mask_personal_data(applicant))


@app.post(
    "/v1/cases/{case_id}/materials",
    response_model=SubmissionResponse,
    tags=["cases"],
    responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
)
async def add_materials(
    case_id: CaseId, body: MaterialsRequest, principal: CurrentPrincipal
) -> SubmissionResponse:
    """Supplement materials: completes a counter case, or answers a review's request."""
    access.may_act(principal)
    index = _catalog()
    case = await _case_of_the_office(case_id, principal)
    item = index.items.get(case.item_code)
    required = [m.code for m in item.materials if m.required] if item is not None else None
    if item is not None:
        known = {m.code for m in item.materials}
        unknown = [m.code for m in body.materials if m.code not in known]
        if unknown:
            raise Problem(
                422,
                "unknown_material",
                "Unknown material code",
                f"{', '.join(unknown)} not among {', '.join(sorted(known))}",
                errors=[{"field": "materials", "message": f"unknown {c}"} for c in unknown],
            )
    async with unit_of_work(runtime.sessions) as session:
        status, missing = await handlers.add_materials(
            session,
            runtime=runtime,
            case_id=case_id,
            materials=list(body.materials),
            required_codes=required,
            handover_keys=load_keys(settings),
        )
    return SubmissionResponse(
        case_id=case_id, status=status, missing_materials=missing, route_preview=None
    )


@app.post(
    "/v1/cases/{case_id}/withdraw",
    response_model=CaseView,
    tags=["cases"],
    responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
)
async def withdraw(
    case_id: CaseId, principal: CurrentPrincipal, body: WithdrawRequest | None = None
) -> CaseView:
    """Withdraw before the decision, at the office that took the case."""
    access.may_act(principal)
    await _case_of_the_office(case_id, principal)
    async with unit_of_work(runtime.sessions) as session:
        await handlers.withdraw(
            session, runtime=runtime, case_id=case_id, reason=body.reason if body else None
        )
    return await _case_view(case_id, principal)


async def _case_of_the_office(case_id: str, principal: Principal) -> Any:
    """The case, when the caller's office took it; else 404 as for a case that does not exist."""
    async with runtime.sessions() as session:
        case = await handlers.load_case(session, case_id)
    if not access.acts_for(principal, case.office_code, case.channel):
        raise handlers.case_not_found(case_id)
    return case


@app.get("/v1/items", response_model=list[ItemView], tags=["catalog"], responses=errors(401, 503))
async def items(principal: CurrentPrincipal) -> list[ItemView]:
    """The catalog items in force (intake's copy of the newest catalog version)."""
    index = _catalog()
    return [
        ItemView(
            code=i.code,
            name=i.name,
            category=i.category.value,
            mode=i.mode.value,
            intake_levels=sorted(lvl.value for lvl in effective_intake_levels(i)),
            instant=i.instant,
            time_limit_days=i.time_limit_days,
            materials=[m.model_dump(mode="json") for m in i.materials],
            effective_from=i.effective_from,
            effective_to=i.effective_to,
        )
        for i in index.catalog.items
    ]


def create_app(_settings: object = None) -> FastAPI:
    """The app of this module (issue 14 makes it a factory, as routing's)."""
    return app
