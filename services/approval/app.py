"""approval: every routed case lands in its deciding department's worklist, accepted at once
with its deadline; departments decide by REST or by `gov.case.decision.v1` events, through the
same rules (`review`).

Run: `python -m services.approval` (port 8003).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Path, Query, Request

from contracts.common import CaseStatus
from contracts.events import (
    DECISIONS_TOPIC,
    INTAKE_TOPIC,
    ROUTING_TOPIC,
    CaseRouted,
    CaseSupplemented,
    CaseWithdrawn,
    DecisionKind,
    DecisionMade,
)
from contracts.rest import ApprovalCaseView, DecisionRequest, DecisionResponse, WorklistEntry
from services.approval import handlers, review
from services.common.catalog_follower import CatalogFollower
from services.common.consumer import Subscription
from services.common.db import unit_of_work
from services.common.envelope import Envelope
from services.common.service import ServiceRuntime
from services.common.settings import CommonSettings
from services.common.web import Problem
from services.common.workdays import WorkCalendar


class ApprovalSettings(CommonSettings):
    service: str = "approval"
    http_port: int = 8003


settings = ApprovalSettings()
runtime = ServiceRuntime(settings)
calendars: CatalogFollower[WorkCalendar] = CatalogFollower(settings, handlers.build_calendar)


async def _on_routed(session: Any, envelope: Envelope, payload: CaseRouted) -> None:
    await handlers.take_routed(session, envelope, payload, runtime=runtime, calendars=calendars)


async def _on_decision(session: Any, envelope: Envelope, payload: DecisionMade) -> None:
    await handlers.decision_made(session, envelope, payload, runtime=runtime)


# One consumer group per topic: a decision that overtook its case's routed event waits in its
# own consumer's retries while the routing consumer goes on and takes the case.
runtime.consume(
    ROUTING_TOPIC,
    subscriptions={"gov.case.routed.v1": Subscription(_on_routed, CaseRouted)},
)
runtime.consume(
    DECISIONS_TOPIC,
    subscriptions={"gov.case.decision.v1": Subscription(_on_decision, DecisionMade)},
)
runtime.consume(
    INTAKE_TOPIC,
    subscriptions={
        "gov.case.withdrawn.v1": Subscription(handlers.case_withdrawn, CaseWithdrawn),
        "gov.case.supplemented.v1": Subscription(handlers.case_supplemented, CaseSupplemented),
    },
)
runtime.on_startup(calendars.start)
runtime.background(calendars.run, calendars.stop)

app = runtime.create_app(
    title="tongban approval",
    description="Acceptance, deadlines and decisions of routed cases (DESIGN.md §1, §3, §4).",
)

CaseId = Annotated[str, Path(min_length=1, max_length=64)]


@app.get("/v1/worklist", response_model=list[WorklistEntry], tags=["approval"])
async def worklist(
    department: Annotated[str, Query(min_length=1, max_length=64)],
    status: Annotated[CaseStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[WorklistEntry]:
    """A department's cases not yet decided (`accepted`, `supplement_requested`), or those in
    `status`; oldest deadline first."""
    async with runtime.sessions() as session:
        return await handlers.worklist(session, department=department, status=status, limit=limit)


@app.post("/v1/cases/{case_id}/decisions", response_model=DecisionResponse, tags=["approval"])
async def decide(case_id: CaseId, body: DecisionRequest, request: Request) -> DecisionResponse:
    """approve, deny (with its legal basis) or request_supplement (every missing material at
    once). Acceptance is automatic on routing, so `accept` is refused as `invalid_state`."""
    async with unit_of_work(runtime.sessions) as session:
        result = await handlers.decide_case(
            session,
            runtime=runtime,
            case_id=case_id,
            decision=handlers.decision_of(body),
            now=datetime.now(UTC),
            traceparent=request.headers.get("traceparent"),
        )
    if isinstance(result, review.Refusal):
        raise Problem(
            result.status,
            result.code,
            result.title,
            result.message,
            errors=[{"field": result.field, "message": result.message}] if result.field else (),
        )
    return DecisionResponse(case_id=case_id, status=result.state.status)


@app.get("/v1/cases/{case_id}", response_model=ApprovalCaseView, tags=["approval"])
async def get_case(case_id: CaseId) -> ApprovalCaseView:
    """Status, department and deadline of a case at approval."""
    async with runtime.sessions() as session:
        row = await handlers.load_row(session, case_id)
    if row is None:
        raise Problem(
            404,
            "case_not_found",
            "No such case at approval",
            f"Case {case_id!r} has not been routed to any department (yet).",
        )
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
    )
