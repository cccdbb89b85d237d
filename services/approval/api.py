"""approval's REST routes: parse, check the caller's role and department, call a handler or a
query. Refusals become problem JSON at this edge (services.common.refusals)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from contracts.common import CaseStatus, Code
from contracts.rest import (
    ApprovalCaseView,
    BundleAtRisk,
    CaseAtRisk,
    DecisionRequest,
    DecisionResponse,
    FollowupAnswerRequest,
    FollowupEntry,
    HandoverProblemEntry,
    SlaBoardRow,
    VerificationEntry,
    VerificationRequest,
    WorklistEntry,
)
from services.approval import handlers, queries
from services.approval.domain import review
from services.approval.handlers import Approval
from services.common.auth import CurrentPrincipal, Principal, Role, in_scope, require, require_scope
from services.common.db import unit_of_work
from services.common.logs import mask_name
from services.common.refusals import Refusal
from services.common.service import service_parts
from services.common.web import CaseId, errors, problem_of

ApprovalDep = Annotated[Approval, Depends(service_parts)]
Department = Annotated[Code, Query(min_length=1, max_length=64)]
OVERSEERS = (Role.operator, Role.admin)
router = APIRouter()


def _department_reader(principal: Principal, department: str | None) -> None:
    """Reviewers read their own department's cases; operators and admins every one."""
    if principal.role in OVERSEERS:
        return
    require(principal, Role.reviewer)
    require_scope(principal, department, "department", exempt=())


def _reviewer_of(principal: Principal, department: str) -> None:
    """Decisions and answers are a reviewer's of that department, no one else's."""
    require(principal, Role.reviewer)
    require_scope(principal, department, "department", exempt=())


@router.get(
    "/v1/worklist",
    tags=["approval"],
    responses=errors(401, 403, 422, 503),
)
async def worklist(
    department: Department,
    status: Annotated[CaseStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    *,
    principal: CurrentPrincipal,
    approval: ApprovalDep,
) -> list[WorklistEntry]:
    """A department's cases not yet decided (`accepted`, `supplement_requested`), or those in
    `status`; oldest deadline first. Reviewers see their own department's (audited);
    operators and admins any department's, with applicants' names masked."""
    _department_reader(principal, department)
    async with unit_of_work(approval.runtime.sessions) as session:
        entries = await queries.worklist(session, department=department, status=status, limit=limit)
        await approval.runtime.audit(
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


@router.post(
    "/v1/cases/{case_id}/decisions",
    tags=["approval"],
    responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
)
async def decide(
    case_id: CaseId,
    body: DecisionRequest,
    request: Request,
    principal: CurrentPrincipal,
    approval: ApprovalDep,
) -> DecisionResponse:
    """approve, deny (with its legal basis) or request_supplement (every missing material at
    once), by a reviewer of the department the case is routed to. Acceptance is automatic on
    routing, so `accept` is refused as `invalid_state`. Every decision is audited."""
    _reviewer_of(principal, body.department)
    async with unit_of_work(approval.runtime.sessions) as session:
        row = await queries.load_row(session, case_id)
        if row is None or row.department != body.department:
            # Another department's case, or one withdrawn before it was routed (no
            # department): to this reviewer it does not exist.
            raise problem_of(review.case_not_found(case_id))
        result = await handlers.decide_case(
            session,
            approval=approval,
            case_id=case_id,
            decision=handlers.decision_of(body),
            now=approval.runtime.clock.now(),
            traceparent=request.headers.get("traceparent"),
        )
        if isinstance(result, Refusal):
            raise problem_of(result)
        await approval.runtime.audit(
            session, principal, "case.decide", case_id, {"decision": body.decision.value}
        )
    return DecisionResponse(case_id=case_id, status=result.state.status)


@router.get(
    "/v1/cases/{case_id}",
    tags=["approval"],
    responses=errors(401, 403, 404, 422, 503),
)
async def get_case(
    case_id: CaseId, principal: CurrentPrincipal, approval: ApprovalDep
) -> ApprovalCaseView:
    """Status, department and deadline of a case at approval: for its department's reviewers,
    operators and admins; to any other reviewer it does not exist (404)."""
    require(principal, Role.reviewer, *OVERSEERS)
    async with unit_of_work(approval.runtime.sessions) as session:
        row = await queries.load_row(session, case_id)
        if row is None or not (
            principal.role in OVERSEERS or in_scope(principal, row.department, exempt=())
        ):
            raise problem_of(review.case_not_found(case_id))
        verification = await queries.load_verification(session, case_id)
        await approval.runtime.audit(session, principal, "case.read", case_id)
    return queries.case_view(row, verification)


@router.get(
    "/v1/followups",
    tags=["ratings"],
    responses=errors(401, 403, 422, 503),
)
async def followups(
    department: Department,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    *,
    principal: CurrentPrincipal,
    approval: ApprovalDep,
) -> list[FollowupEntry]:
    """A department's unanswered follow-ups of dissatisfied ratings, nearest deadline first."""
    _department_reader(principal, department)
    async with approval.runtime.sessions() as session:
        return await queries.open_followups(session, department=department, limit=limit)


@router.post(
    "/v1/cases/{case_id}/followup",
    tags=["ratings"],
    responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
)
async def answer_followup(
    case_id: CaseId,
    body: FollowupAnswerRequest,
    principal: CurrentPrincipal,
    approval: ApprovalDep,
) -> FollowupEntry:
    """The department's answer to a dissatisfied rating; stops its clock."""
    _reviewer_of(principal, body.department)
    async with unit_of_work(approval.runtime.sessions) as session:
        result = await handlers.answer_followup(
            session,
            approval=approval,
            case_id=case_id,
            department=body.department,
            answer=body.answer,
            now=approval.runtime.clock.now(),
        )
        if isinstance(result, Refusal):
            raise problem_of(_as_missing_to_others(result, handlers.followup_not_found(case_id)))
        answered = await queries.followup(session, case_id)
    return answered


@router.get(
    "/v1/verifications",
    tags=["approval"],
    responses=errors(401, 403, 422, 503),
)
async def verifications(
    department: Department,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    *,
    principal: CurrentPrincipal,
    approval: ApprovalDep,
) -> list[VerificationEntry]:
    """A department's open verifications of commitments (告知承诺), nearest due day first:
    the case, its item, the materials committed instead of proven, when the approval took
    effect and the day the check is due. Reviewers of the department, operators, admins."""
    _department_reader(principal, department)
    async with approval.runtime.sessions() as session:
        return await queries.open_verifications(session, department=department, limit=limit)


@router.post(
    "/v1/cases/{case_id}/verification",
    tags=["approval"],
    responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
)
async def verify(
    case_id: CaseId,
    body: VerificationRequest,
    request: Request,
    principal: CurrentPrincipal,
    approval: ApprovalDep,
) -> VerificationEntry:
    """What checking the commitments found, by a reviewer of the deciding department (their
    token's department): `confirmed` closes the verification (`gov.case.verified.v1`);
    `breached` revokes the decision (`gov.case.revoked.v1`, reason `commitment_breached`,
    status `revoked`), which revokes its e-licence and bars the applicant from commitments.
    Another department's case is 404 as a missing one; no open verification, 409
    `invalid_state`. Audited."""
    require(principal, Role.reviewer)
    department = principal.scope or ""
    async with unit_of_work(approval.runtime.sessions) as session:
        result = await handlers.answer_verification(
            session,
            approval=approval,
            case_id=case_id,
            department=department,
            result=body.result,
            note=body.note,
            now=approval.runtime.clock.now(),
            traceparent=request.headers.get("traceparent"),
        )
        if isinstance(result, Refusal):
            raise problem_of(result)
        await approval.runtime.audit(
            session, principal, "case.verify", case_id, {"result": body.result.value}
        )
    return queries.verification_entry(result.verification)


@router.get(
    "/v1/handovers/refused",
    tags=["operators"],
    responses=errors(401, 403, 422, 503),
)
async def refused_handovers(
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    *,
    principal: CurrentPrincipal,
    approval: ApprovalDep,
) -> list[HandoverProblemEntry]:
    """Entrusted cases held because their signed handover did not verify (altered data, a
    missing or forged signature): operators follow them up with the intake office."""
    require(principal, *OVERSEERS)
    async with approval.runtime.sessions() as session:
        return await queries.handover_problems(session, limit=limit)


@router.get(
    "/v1/sla/board",
    tags=["operators"],
    responses=errors(401, 403, 422, 503),
)
async def sla_board(
    principal: CurrentPrincipal,
    approval: ApprovalDep,
    department: Annotated[Code | None, Query(min_length=1, max_length=64)] = None,
) -> list[SlaBoardRow]:
    """Per department: open cases, warned, overdue, with an unknown deadline, and the nearest
    deadline, most pressing first (operators and admins; a reviewer, their department)."""
    if principal.role not in OVERSEERS:
        _department_reader(principal, department)
    async with approval.runtime.sessions() as session:
        return await queries.sla_board(
            session, today=approval.runtime.clock.today(), department=department
        )


@router.get(
    "/v1/sla/cases",
    tags=["operators"],
    responses=errors(401, 403, 422, 503),
)
async def sla_cases(
    principal: CurrentPrincipal,
    approval: ApprovalDep,
    department: Annotated[Code | None, Query(min_length=1, max_length=64)] = None,
    within_days: Annotated[int, Query(ge=0, le=365)] = 3,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[CaseAtRisk]:
    """Clocks at risk within `within_days` calendar days (overdue ones included), nearest
    first: open cases by their deadline (or an unknown one), deferred materials by their due
    day (容缺受理), open verifications of commitments by theirs (告知承诺)."""
    if principal.role not in OVERSEERS:
        _department_reader(principal, department)
    until = approval.runtime.clock.today() + timedelta(days=within_days)
    async with approval.runtime.sessions() as session:
        return await queries.cases_at_risk(session, until=until, department=department, limit=limit)


@router.get(
    "/v1/sla/bundles",
    tags=["operators"],
    responses=errors(401, 403, 422, 503),
)
async def sla_bundles(
    principal: CurrentPrincipal,
    approval: ApprovalDep,
    department: Annotated[
        Code | None, Query(min_length=1, max_length=64, description="the lead department")
    ] = None,
    within_days: Annotated[int, Query(ge=0, le=365)] = 3,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[BundleAtRisk]:
    """Bundle clocks at risk (一件事, DESIGN.md §8) within `within_days` calendar days
    (overdue ones included, and those whose deadline is unknown past the calendar), nearest
    first: a bundle's deadline runs from its first member acceptance, and its clock stops when
    every member is decided or ended. Each names the members still open. Operators and
    admins; a reviewer, the bundles their department leads."""
    if principal.role not in OVERSEERS:
        _department_reader(principal, department)
    today = approval.runtime.clock.today()
    async with approval.runtime.sessions() as session:
        return await queries.bundles_at_risk(
            session,
            today=today,
            until=today + timedelta(days=within_days),
            lead=department,
            limit=limit,
        )


def _as_missing_to_others(refusal: Refusal, missing: Refusal) -> Refusal:
    """A reviewer acting on another department's follow-up gets `missing`, the answer for a
    case without one (the body's department is the caller's own: `require_scope` saw to it),
    so an id tells nothing about the cases outside the caller's department."""
    return missing if refusal.code == "wrong_department" else refusal
