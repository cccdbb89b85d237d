"""approval: every routed case lands in its deciding department's worklist, accepted at once
with its deadline; departments decide by REST or by `gov.case.decision.v1` events, through the
same rules (`review`).

Run: `python -m services.approval` (port 8003).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from pydantic import Field, model_validator

from contracts.common import CaseStatus, Code
from contracts.events import (
    DECISIONS_TOPIC,
    DELIVERY_TOPIC,
    INTAKE_TOPIC,
    ROUTING_TOPIC,
    CaseRated,
    CaseRouted,
    CaseSupplemented,
    CaseWithdrawn,
    DecisionKind,
    DecisionMade,
)
from contracts.rest import (
    ApprovalCaseView,
    CaseAtRisk,
    DecisionRequest,
    DecisionResponse,
    FollowupAnswerRequest,
    FollowupEntry,
    HandoverProblemEntry,
    SlaBoardRow,
    WorklistEntry,
)
from services.approval import handlers, review
from services.approval.clock import local_date
from services.approval.sla import ClockScheduler
from services.common.auth import Principal, Role, authenticated, in_scope, require, require_scope
from services.common.catalog_follower import CatalogFollower
from services.common.db import unit_of_work
from services.common.envelope import Envelope
from services.common.handover import HandoverTrust, load_trust, verify_handover
from services.common.logs import mask_name
from services.common.service import ServiceRuntime, ServiceSettings
from services.common.web import CaseId, Problem, errors
from services.common.workdays import WorkCalendar


class ApprovalSettings(ServiceSettings):
    service: str = "approval"
    http_port: int = 8003
    # SLA warnings at these shares of the committed limit; overdue at 100% always.
    sla_warning_points: list[float] = Field(default=[0.5, 0.8])
    sla_poll_s: float = Field(1.0, gt=0)
    # Working days a department has to answer a dissatisfied rating.
    followup_days: int = Field(5, ge=1)
    # Test and dev only: run the SLA clock this many seconds ahead, to see timers fire.
    sla_clock_offset_s: float = 0.0

    @model_validator(mode="after")
    def _offset_only_in_dev(self) -> ApprovalSettings:
        if self.sla_clock_offset_s and not self.is_dev:
            raise ValueError("TONGBAN_SLA_CLOCK_OFFSET_S is for dev and test only")
        return self


settings = ApprovalSettings()
runtime = ServiceRuntime(settings)
calendars: CatalogFollower[WorkCalendar] = runtime.follow_catalog(handlers.build_calendar)
trust: HandoverTrust | None = None


async def _load_trust() -> None:
    global trust
    trust = load_trust(settings)


def _check_handover(routed: CaseRouted) -> str | None:
    """Why an entrusted case's handover cannot be trusted, or None when it verifies."""
    assert trust is not None
    check = verify_handover(
        routed.handover, case_id=routed.case_id, application=routed.application, trust=trust
    )
    return None if check.ok else check.describe()


def _latest_calendar() -> tuple[int, WorkCalendar] | None:
    version = calendars.latest_version
    return None if version is None else (version, calendars.versions[version])


async def _on_calendar(calendar: WorkCalendar) -> None:
    await handlers.set_known_deadlines(
        runtime=runtime, calendar=calendar, warning_points=settings.sla_warning_points
    )


scheduler = ClockScheduler(
    runtime,
    poll_s=settings.sla_poll_s,
    clock_offset=timedelta(seconds=settings.sla_clock_offset_s),
    latest_calendar=_latest_calendar,
    on_calendar=_on_calendar,
)


async def _on_routed(session: Any, envelope: Envelope, payload: CaseRouted) -> None:
    await handlers.take_routed(
        session,
        envelope,
        payload,
        runtime=runtime,
        calendars=calendars,
        warning_points=settings.sla_warning_points,
        check_handover=_check_handover,
    )


async def _on_supplemented(session: Any, envelope: Envelope, payload: CaseSupplemented) -> None:
    await handlers.case_supplemented(
        session,
        envelope,
        payload,
        runtime=runtime,
        calendars=calendars,
        warning_points=settings.sla_warning_points,
    )


async def _on_rated(session: Any, envelope: Envelope, payload: CaseRated) -> None:
    await handlers.case_rated(
        session,
        envelope,
        payload,
        runtime=runtime,
        calendars=calendars,
        followup_days=settings.followup_days,
    )


async def _on_decision(session: Any, envelope: Envelope, payload: DecisionMade) -> None:
    await handlers.decision_made(session, envelope, payload, runtime=runtime)


# One consumer group per topic: a decision that overtook its case's routed event waits in its
# own consumer's retries while the routing consumer goes on and takes the case.
runtime.consume(
    ROUTING_TOPIC,
    subscriptions={CaseRouted: _on_routed},
)
runtime.consume(
    DECISIONS_TOPIC,
    subscriptions={DecisionMade: _on_decision},
)
runtime.consume(
    INTAKE_TOPIC,
    subscriptions={
        CaseWithdrawn: handlers.case_withdrawn,
        CaseSupplemented: _on_supplemented,
    },
)
runtime.consume(
    DELIVERY_TOPIC,
    subscriptions={CaseRated: _on_rated},
)
runtime.on_startup(_load_trust)
runtime.on_startup(calendars.start)
runtime.background(calendars.run, calendars.stop)
runtime.background(scheduler.run, scheduler.stop)

app = runtime.create_app(
    title="tongban approval",
    description="Acceptance, deadlines and decisions of routed cases (DESIGN.md §1, §3, §4).",
)

Department = Annotated[Code, Query(min_length=1, max_length=64)]
CurrentPrincipal = Annotated[Principal, Depends(authenticated)]
OVERSEERS = (Role.operator, Role.admin)


def _department_reader(principal: Principal, department: str | None) -> None:
    """Reviewers read their own department's cases; operators and admins every one."""
    if principal.role in OVERSEERS:
        return
    require(principal, Role.reviewer)
    require_scope(principal, department, "department", exempt=())


@app.get(
    "/v1/worklist",
    response_model=list[WorklistEntry],
    tags=["approval"],
    responses=errors(401, 403, 422, 503),
)
async def worklist(
    department: Department,
    status: Annotated[CaseStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    *,
    principal: CurrentPrincipal,
) -> list[WorklistEntry]:
    """A department's cases not yet decided (`accepted`, `supplement_requested`), or those in
    `status`; oldest deadline first. Reviewers see their own department's (audited);
    operators and admins any department's, with applicants' names masked."""
    _department_reader(principal, department)
    async with unit_of_work(runtime.sessions) as session:
        entries = await handlers.worklist(
            session, department=department, status=status, limit=limit
        )
        await runtime.audit(
            session,
            principal,
            "worklist.read",
            None,
            {"department": department, "cases": len(entries)},
        )
    if principal.role in OVERSEERS:
        entries = [
            e.model_copy(update={"applicant_name": mask_name(e.applicant_name)}) for e in entries
        ]
    return entries


@app.post(
    "/v1/cases/{case_id}/decisions",
    response_model=DecisionResponse,
    tags=["approval"],
    responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
)
async def decide(
    case_id: CaseId, body: DecisionRequest, request: Request, principal: CurrentPrincipal
) -> DecisionResponse:
    """approve, deny (with its legal basis) or request_supplement (every missing material at
    once), by a reviewer of the department the case is routed to. Acceptance is automatic on
    routing, so `accept` is refused as `invalid_state`. Every decision is audited."""
    require(principal, Role.reviewer)
    require_scope(principal, body.department, "department", exempt=())
    async with unit_of_work(runtime.sessions) as session:
        row = await handlers.load_row(session, case_id)
        if row is None or row.department != body.department:
            # Another department's case, or one withdrawn before it was routed (no
            # department): to this reviewer it does not exist.
            raise _problem(review.case_not_found(case_id))
        result = await handlers.decide_case(
            session,
            runtime=runtime,
            case_id=case_id,
            decision=handlers.decision_of(body),
            now=datetime.now(UTC),
            traceparent=request.headers.get("traceparent"),
        )
        if isinstance(result, review.Refusal):
            raise _problem(result)
        await runtime.audit(
            session, principal, "case.decide", case_id, {"decision": body.decision.value}
        )
    return DecisionResponse(case_id=case_id, status=result.state.status)


@app.get(
    "/v1/cases/{case_id}",
    response_model=ApprovalCaseView,
    tags=["approval"],
    responses=errors(401, 403, 404, 422, 503),
)
async def get_case(case_id: CaseId, principal: CurrentPrincipal) -> ApprovalCaseView:
    """Status, department and deadline of a case at approval: for its department's reviewers,
    operators and admins; to any other reviewer it does not exist (404)."""
    require(principal, Role.reviewer, *OVERSEERS)
    async with unit_of_work(runtime.sessions) as session:
        row = await handlers.load_row(session, case_id)
        if row is None or not (
            principal.role in OVERSEERS or in_scope(principal, row.department, exempt=())
        ):
            raise _problem(review.case_not_found(case_id))
        await runtime.audit(session, principal, "case.read", case_id)
    return ApprovalCaseView(
        case_id=row.case_id,
        status=CaseStatus(row.status),
        department=row.department,
        item_code=row.item["code"] if row.item else None,
        accepted_at=row.accepted_at,
        deadline=row.deadline,
        time_limit_days=row.time_limit_days,
        missing_materials=list(row.missing_materials),
        supplement_rounds=len(row.pauses),
        decision=DecisionKind(row.decision) if row.decision else None,
        reason=row.reason,
        legal_basis=row.legal_basis,
        decided_at=row.decided_at,
        withdrawn_at=row.withdrawn_at,
        handover_problem=row.handover_problem,
    )


@app.get(
    "/v1/followups",
    response_model=list[FollowupEntry],
    tags=["ratings"],
    responses=errors(401, 403, 422, 503),
)
async def followups(
    department: Department,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    *,
    principal: CurrentPrincipal,
) -> list[FollowupEntry]:
    """A department's unanswered follow-ups of dissatisfied ratings, nearest deadline first."""
    _department_reader(principal, department)
    async with runtime.sessions() as session:
        rows = await handlers.open_followups(session, department=department, limit=limit)
    return [FollowupEntry.model_validate(r) for r in rows]


@app.post(
    "/v1/cases/{case_id}/followup",
    response_model=FollowupEntry,
    tags=["ratings"],
    responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
)
async def answer_followup(
    case_id: CaseId, body: FollowupAnswerRequest, principal: CurrentPrincipal
) -> FollowupEntry:
    """The department's answer to a dissatisfied rating; stops its clock."""
    require(principal, Role.reviewer)
    require_scope(principal, body.department, "department", exempt=())
    async with unit_of_work(runtime.sessions) as session:
        result = await handlers.answer_followup(
            session,
            runtime=runtime,
            case_id=case_id,
            department=body.department,
            answer=body.answer,
            now=datetime.now(UTC),
        )
        if isinstance(result, review.Refusal):
            raise _problem(_as_missing_to_others(result, handlers.followup_not_found(case_id)))
        row = await handlers.followup_row(session, case_id)
    return FollowupEntry.model_validate(row)


@app.get(
    "/v1/handovers/refused",
    response_model=list[HandoverProblemEntry],
    tags=["operators"],
    responses=errors(401, 403, 422, 503),
)
async def refused_handovers(
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    *,
    principal: CurrentPrincipal,
) -> list[HandoverProblemEntry]:
    """Entrusted cases held because their signed handover did not verify (altered data, a
    missing or forged signature): operators follow them up with the intake office."""
    require(principal, *OVERSEERS)
    async with runtime.sessions() as session:
        rows = await handlers.handover_problems(session, limit=limit)
    return [HandoverProblemEntry.model_validate(r) for r in rows]


@app.get(
    "/v1/sla/board",
    response_model=list[SlaBoardRow],
    tags=["operators"],
    responses=errors(401, 403, 422, 503),
)
async def sla_board(
    principal: CurrentPrincipal,
    department: Annotated[Code | None, Query(min_length=1, max_length=64)] = None,
) -> list[SlaBoardRow]:
    """Per department: open cases, warned, overdue, with an unknown deadline, and the nearest
    deadline, most pressing first (operators and admins; a reviewer, their department)."""
    if principal.role not in OVERSEERS:
        _department_reader(principal, department)
    async with runtime.sessions() as session:
        rows = await handlers.sla_board(
            session, today=local_date(datetime.now(UTC)), department=department
        )
    return [SlaBoardRow.model_validate(r) for r in rows]


@app.get(
    "/v1/sla/cases",
    response_model=list[CaseAtRisk],
    tags=["operators"],
    responses=errors(401, 403, 422, 503),
)
async def sla_cases(
    principal: CurrentPrincipal,
    department: Annotated[Code | None, Query(min_length=1, max_length=64)] = None,
    within_days: Annotated[int, Query(ge=0, le=365)] = 3,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[CaseAtRisk]:
    """Open cases due within `within_days` calendar days, overdue, or with an unknown deadline,
    nearest first."""
    if principal.role not in OVERSEERS:
        _department_reader(principal, department)
    until = local_date(datetime.now(UTC)) + timedelta(days=within_days)
    async with runtime.sessions() as session:
        rows = await handlers.cases_at_risk(
            session, until=until, department=department, limit=limit
        )
    return [CaseAtRisk.model_validate(r) for r in rows]


def _as_missing_to_others(refusal: review.Refusal, missing: review.Refusal) -> review.Refusal:
    """A reviewer acting on another department's follow-up gets `missing`, the answer for a
    case without one (the body's department is the caller's own: `require_scope` saw to it),
    so an id tells nothing about the cases outside the caller's department."""
    return missing if refusal.code == "wrong_department" else refusal


def _problem(refusal: review.Refusal) -> Problem:
    return Problem(
        refusal.status,
        refusal.code,
        refusal.title,
        refusal.message,
        errors=[{"field": refusal.field, "message": refusal.message}] if refusal.field else (),
    )


def create_app(_settings: object = None) -> FastAPI:
    """The app of this module (issue 14 makes it a factory, as routing's)."""
    return app
