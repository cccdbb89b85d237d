"""approval's unit-of-work functions: take routed cases, apply decisions (from REST or Kafka, the
same path), follow withdrawals and supplements, and read the worklist. The rules themselves
live in `review` (pure); these functions load, lock, save and emit in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.catalog import Calendar
from contracts.common import Application, CaseStatus, ItemSnapshot, Mode, Route
from contracts.events import (
    CaseFollowupAnswered,
    CaseFollowupOpened,
    CaseRated,
    CaseRouted,
    CaseSupplemented,
    CaseWithdrawn,
    CatalogPublished,
    ClockStep,
    DecisionKind,
    DecisionMade,
)
from contracts.rest import DecisionRequest, WorklistEntry
from services.approval import clock, models, review, sla
from services.approval.clock import local_date
from services.approval.review import CaseState, Decision, Outcome, Pause, Refusal, Unrouted
from services.common import audit
from services.common.catalog_follower import CatalogFollower
from services.common.consumer import PermanentError
from services.common.db import unit_of_work
from services.common.envelope import Envelope
from services.common.logs import get_logger
from services.common.service import ServiceRuntime
from services.common.workdays import WorkCalendar

log = get_logger(__name__)

DEADLINES_UNKNOWN = Counter(
    "tongban_approval_deadline_unknown_total",
    "Cases accepted without a deadline: past the catalog calendar's covers_until, or no calendar",
)

HANDOVERS_REFUSED = Counter(
    "tongban_approval_handovers_refused_total",
    "Entrusted handovers that failed verification (altered data, bad or missing signature)",
)

cases = models.cases


class CaseNotYetRouted(Exception):
    """A decision event for a case approval does not know. Not permanent at first: the routed
    event travels on another topic and may still be on its way, so the consumer's bounded
    retries give it time; after them the decision goes to the dead-letter topic."""


# -- the catalog calendar ----------------------------------------------------------------------


def build_calendar(published: CatalogPublished) -> WorkCalendar:
    """The working-day calendar of one catalog version (what approval needs of the catalog)."""
    return WorkCalendar.of(Calendar.model_validate(published.catalog.get("calendar")))


def calendar_for(follower: CatalogFollower[WorkCalendar], version: int) -> WorkCalendar | None:
    """The calendar of the version the route names; the latest if that one is not known here."""
    calendar = follower.at(version)
    return calendar if calendar is not None else follower.latest


# -- rows <-> review state ---------------------------------------------------------------------


def _state(row: Any) -> CaseState | Unrouted:
    if row.route is None:
        return Unrouted(case_id=row.case_id, status=CaseStatus(row.status))
    return CaseState(
        case_id=row.case_id,
        department=row.department,
        status=CaseStatus(row.status),
        item=ItemSnapshot.model_validate(row.item),
        route=Route.model_validate(row.route),
        application=Application.model_validate(row.application),
        accepted_at=row.accepted_at,
        deadline=row.deadline,
        time_limit_days=row.time_limit_days,
        missing_materials=tuple(row.missing_materials),
        pauses=tuple(
            Pause(
                requested_at=datetime.fromisoformat(p["requested_at"]),
                supplemented_at=datetime.fromisoformat(p["supplemented_at"])
                if p.get("supplemented_at")
                else None,
            )
            for p in row.pauses
        ),
        decision=DecisionKind(row.decision) if row.decision else None,
        reason=row.reason,
        legal_basis=row.legal_basis,
        decided_at=row.decided_at,
        withdrawn_at=row.withdrawn_at,
        handover_problem=row.handover_problem,
    )


def _row(state: CaseState, now: datetime) -> dict[str, Any]:
    return {
        "case_id": state.case_id,
        "department": state.department,
        "status": state.status.value,
        "item": state.item.model_dump(mode="json"),
        "route": state.route.model_dump(mode="json"),
        "application": state.application.model_dump(mode="json"),
        "accepted_at": state.accepted_at,
        "deadline": state.deadline,
        "time_limit_days": state.time_limit_days,
        "missing_materials": list(state.missing_materials),
        "pauses": [
            {
                "requested_at": p.requested_at.isoformat(),
                "supplemented_at": p.supplemented_at.isoformat() if p.supplemented_at else None,
            }
            for p in state.pauses
        ],
        "decision": state.decision.value if state.decision else None,
        "reason": state.reason,
        "legal_basis": state.legal_basis,
        "decided_at": state.decided_at,
        "withdrawn_at": state.withdrawn_at,
        "handover_problem": state.handover_problem,
        "updated_at": now,
    }


async def load_row(session: AsyncSession, case_id: str, *, lock: bool = False) -> Any:
    query = select(cases).where(cases.c.case_id == case_id)
    return (await session.execute(query.with_for_update() if lock else query)).first()


async def load(
    session: AsyncSession, case_id: str, *, lock: bool = False
) -> CaseState | Unrouted | None:
    row = await load_row(session, case_id, lock=lock)
    return None if row is None else _state(row)


async def _save(session: AsyncSession, state: CaseState, now: datetime) -> None:
    values = _row(state, now)
    del values["case_id"]
    await session.execute(update(cases).where(cases.c.case_id == state.case_id).values(values))


async def _emit(
    session: AsyncSession,
    runtime: ServiceRuntime,
    outcome: Outcome,
    traceparent: str | None,
) -> None:
    for payload in outcome.events:
        await runtime.emit(
            session,
            payload,
            handledby=outcome.state.department,
            traceparent=traceparent,
        )


# -- case.routing.v1 ---------------------------------------------------------------------------


async def take_routed(
    session: AsyncSession,
    envelope: Envelope,
    routed: CaseRouted,
    *,
    runtime: ServiceRuntime,
    calendars: CatalogFollower[WorkCalendar],
    warning_points: Sequence[float],
    check_handover: Callable[[CaseRouted], str | None],
) -> None:
    """Into the department's worklist, accepted at once (approved too if instant). A case is
    accepted once: a second routed event for it changes nothing. Entrusted intake is taken
    only with a handover that verifies."""
    now = datetime.now(UTC)
    route = routed.route
    calendar = calendar_for(calendars, route.catalog_version)
    problem = check_handover(routed) if route.path is Mode.entrusted else None
    if problem:
        HANDOVERS_REFUSED.inc()
        log.error(
            "entrusted handover refused",
            case_id=routed.case_id,
            reason=problem,
            office=route.entrusted_receiver,
        )
    outcome = review.take(routed, now=now, calendar=calendar, handover_problem=problem)
    inserted = await session.execute(
        pg_insert(cases)
        .values(_row(outcome.state, now))
        .on_conflict_do_nothing()
        .returning(cases.c.case_id)
    )
    if inserted.scalar() is None:
        # Taken before, or withdrawn before routing reached us: then only record where it
        # would have gone (the withdrawal stands; nothing is accepted).
        await session.execute(
            update(cases)
            .where(cases.c.case_id == routed.case_id, cases.c.route.is_(None))
            .values(
                department=route.handled_by,
                item=routed.item.model_dump(mode="json"),
                route=route.model_dump(mode="json"),
                application=routed.application.model_dump(mode="json"),
                time_limit_days=route.time_limit_days,
                updated_at=now,
            )
        )
        return
    if outcome.state.deadline is None and not outcome.state.instant:
        DEADLINES_UNKNOWN.inc()
        log.error(
            "deadline unknown: past the catalog calendar"
            if calendar
            else "deadline unknown: no catalog calendar here",
            case_id=routed.case_id,
            catalog_version=route.catalog_version,
            covers_until=str(calendar.covers_until) if calendar else None,
            time_limit_days=route.time_limit_days,
        )
    await arm_decision_clock(session, outcome.state, calendar, warning_points)
    await _emit(session, runtime, outcome, envelope.traceparent)


async def arm_decision_clock(
    session: AsyncSession,
    state: CaseState,
    calendar: WorkCalendar | None,
    warning_points: Sequence[float],
) -> None:
    """Warnings and overdue of an open case's committed limit, from its (paused) clock."""
    if state.status is not CaseStatus.accepted or state.accepted_at is None or state.instant:
        return
    intervals = clock.paused_intervals((p.requested_at, p.supplemented_at) for p in state.pauses)
    points = clock.clock_points(
        calendar, local_date(state.accepted_at), state.time_limit_days, warning_points, intervals
    )
    await sla.arm(
        session,
        case_id=state.case_id,
        department=state.department,
        step=ClockStep.decision,
        points=points,
        deadline=state.deadline,
    )


# -- decisions (REST and case.decisions.v1) ----------------------------------------------------


def decision_of(body: DecisionRequest | DecisionMade) -> Decision:
    return Decision(
        department=body.department,
        kind=body.decision,
        reason=body.reason,
        legal_basis=body.legal_basis,
        missing_materials=tuple(body.missing_materials),
    )


async def decide_case(
    session: AsyncSession,
    *,
    runtime: ServiceRuntime,
    case_id: str,
    decision: Decision,
    now: datetime,
    traceparent: str | None = None,
) -> Outcome | Refusal:
    """Apply one decision under the case's row lock, so a REST decision and an event decision
    for the same case never both apply: the second sees the first's result and is refused."""
    case = await load(session, case_id, lock=True)
    result = review.decide(case, decision, case_id=case_id, now=now)
    if isinstance(result, Outcome):
        await _save(session, result.state, now)
        if result.state.status is CaseStatus.supplement_requested:
            await sla.pause(session, case_id, ClockStep.decision)
        else:
            await sla.disarm(session, case_id, ClockStep.decision)
        await _emit(session, runtime, result, traceparent)
    return result


async def decision_made(
    session: AsyncSession, envelope: Envelope, made: DecisionMade, *, runtime: ServiceRuntime
) -> None:
    result = await decide_case(
        session,
        runtime=runtime,
        case_id=made.case_id,
        decision=decision_of(made),
        now=datetime.now(UTC),
        traceparent=envelope.traceparent,
    )
    if isinstance(result, Refusal):
        reason = f"{result.code} ({result.status}): {result.message}"
        if result.code == "case_not_found":
            raise CaseNotYetRouted(reason)
        raise PermanentError(reason)
    # Decisions by event are audited like REST ones; the actor is the department system that
    # published it (its CloudEvents source).
    await audit.append(
        session,
        runtime.schema,
        actor=envelope.source,
        role="department_system",
        scope=made.department,
        action="case.decide",
        case_id=made.case_id,
        detail={"decision": made.decision.value, "event_id": envelope.id},
    )


# -- case.intake.v1 ----------------------------------------------------------------------------


async def case_withdrawn(session: AsyncSession, envelope: Envelope, event: CaseWithdrawn) -> None:
    """Withdrawn before the decision: later decisions are refused. A withdrawal that overtakes
    the routing event leaves a row of its own, so the case is never accepted afterwards."""
    now = datetime.now(UTC)
    for _attempt in range(2):
        case = await load(session, event.case_id, lock=True)
        if isinstance(case, CaseState):
            outcome = review.withdrawn(case, at=event.withdrawn_at)
            if outcome is not None:
                await _save(session, outcome.state, now)
                await sla.disarm(session, case.case_id, ClockStep.decision)
            else:
                log.info(
                    "withdrawal after the decision ignored",
                    case_id=event.case_id,
                    status=case.status.value,
                )
            return
        if isinstance(case, Unrouted):
            return
        inserted = await session.execute(
            pg_insert(cases)
            .values(
                case_id=event.case_id,
                status=CaseStatus.withdrawn.value,
                withdrawn_at=event.withdrawn_at,
                updated_at=now,
            )
            .on_conflict_do_nothing()
            .returning(cases.c.case_id)
        )
        if inserted.scalar() is not None:
            return
        # The routed event committed meanwhile: withdraw that case instead.


async def case_supplemented(
    session: AsyncSession,
    envelope: Envelope,
    event: CaseSupplemented,
    *,
    runtime: ServiceRuntime,
    calendars: CatalogFollower[WorkCalendar],
    warning_points: Sequence[float],
) -> None:
    """The applicant answered a supplement request: the review resumes with the time that was
    left and the deadline moves. Counter supplements (before routing) and cases not waiting
    for one are none of approval's business."""
    case = await load(session, event.case_id, lock=True)
    if not isinstance(case, CaseState):
        return
    calendar = calendar_for(calendars, case.route.catalog_version)
    outcome = review.supplemented(case, now=event.supplemented_at, calendar=calendar)
    if outcome is not None:
        await _save(session, outcome.state, datetime.now(UTC))
        await arm_decision_clock(session, outcome.state, calendar, warning_points)
        await _emit(session, runtime, outcome, envelope.traceparent)


async def set_known_deadlines(
    *,
    runtime: ServiceRuntime,
    calendar: WorkCalendar,
    warning_points: Sequence[float],
) -> int:
    """A new catalog calendar: the open cases whose deadline was unknown get one now."""
    updated = 0
    async with unit_of_work(runtime.sessions) as session:
        rows = await session.execute(
            select(cases)
            .where(
                cases.c.deadline.is_(None),
                cases.c.accepted_at.is_not(None),
                cases.c.time_limit_days > 0,
                cases.c.status.in_([s.value for s in review.OPEN_STATUSES]),
            )
            .with_for_update(skip_locked=True)
        )
        now = datetime.now(UTC)
        for row in rows:
            state = _state(row)
            if not isinstance(state, CaseState):
                continue
            outcome = review.deadline_now_known(state, calendar)
            if outcome is None:
                continue
            await _save(session, outcome.state, now)
            await arm_decision_clock(session, outcome.state, calendar, warning_points)
            await _emit(session, runtime, outcome, None)
            updated += 1
    if updated:
        log.info("deadlines set after the calendar was extended", cases=updated)
    return updated


# -- reads -------------------------------------------------------------------------------------


async def worklist(
    session: AsyncSession, *, department: str, status: CaseStatus | None, limit: int
) -> list[WorklistEntry]:
    """A department's undecided cases (or those in `status`), oldest deadline first; a case
    without a known deadline last."""
    statuses = [status.value] if status else [s.value for s in review.OPEN_STATUSES]
    rows = await session.execute(
        select(cases)
        .where(cases.c.department == department, cases.c.status.in_(statuses))
        .order_by(cases.c.deadline.asc().nulls_last(), cases.c.accepted_at, cases.c.case_id)
        .limit(limit)
    )
    return [
        WorklistEntry(
            case_id=r.case_id,
            item_code=r.item["code"],
            item_name=r.item["name"],
            status=CaseStatus(r.status),
            path=r.route["path"],
            level=r.route["level"],
            instant=bool(r.route.get("instant") or r.item["instant"]),
            accepted_at=r.accepted_at,
            deadline=r.deadline,
            applicant_name=r.application["applicant"]["name"],
        )
        for r in rows
        if r.route is not None
    ]


# -- follow-ups of bad ratings (case.delivery.v1) ----------------------------------------------

BAD_RATINGS = frozenset({"dissatisfied", "very_dissatisfied"})


async def case_rated(
    session: AsyncSession,
    envelope: Envelope,
    rated: CaseRated,
    *,
    runtime: ServiceRuntime,
    calendars: CatalogFollower[WorkCalendar],
    followup_days: int,
) -> None:
    """A dissatisfied rating opens a follow-up the deciding department must answer within
    `followup_days` working days; overdue like any other clock."""
    if rated.rating.value not in BAD_RATINGS:
        return
    case = await load(session, rated.case_id)
    if not isinstance(case, CaseState):
        raise CaseNotYetRouted(f"rating for case {rated.case_id} unknown to approval")
    opened_at = rated.rated_at
    calendar = calendar_for(calendars, case.route.catalog_version)
    deadline = clock.case_deadline(calendar, local_date(opened_at), followup_days)
    inserted = await session.execute(
        pg_insert(models.followups)
        .values(
            case_id=case.case_id,
            department=case.department,
            rating=rated.rating.value,
            comment=rated.comment,
            opened_at=opened_at,
            deadline=deadline,
        )
        .on_conflict_do_nothing()
        .returning(models.followups.c.case_id)
    )
    if inserted.scalar() is None:
        return  # one rating per case, so one follow-up
    points = clock.clock_points(calendar, local_date(opened_at), followup_days, ())
    await sla.arm(
        session,
        case_id=case.case_id,
        department=case.department,
        step=ClockStep.followup,
        points=points,
        deadline=deadline,
    )
    await runtime.emit(
        session,
        CaseFollowupOpened(
            case_id=case.case_id,
            department=case.department,
            rating=rated.rating.value,
            comment=rated.comment,
            deadline=deadline,
            opened_at=opened_at,
        ),
        handledby=case.department,
        traceparent=envelope.traceparent,
    )


def followup_not_found(case_id: str) -> Refusal:
    return Refusal(
        "followup_not_found",
        404,
        "No follow-up for this case",
        f"Case {case_id} has no follow-up: only a dissatisfied rating opens one.",
    )


async def answer_followup(
    session: AsyncSession,
    *,
    runtime: ServiceRuntime,
    case_id: str,
    department: str,
    answer: str,
    now: datetime,
) -> Refusal | CaseFollowupAnswered:
    row = (
        await session.execute(
            select(models.followups).where(models.followups.c.case_id == case_id).with_for_update()
        )
    ).first()
    if row is None:
        return followup_not_found(case_id)
    if row.department != department:
        return Refusal(
            "wrong_department",
            403,
            "The follow-up belongs to another department",
            f"Case {case_id}'s follow-up is owed by {row.department}.",
            field="department",
        )
    if row.answered_at is not None:
        return Refusal(
            "invalid_state",
            409,
            "The follow-up is already answered",
            f"Case {case_id}'s follow-up was answered at {row.answered_at}.",
        )
    await session.execute(
        update(models.followups)
        .where(models.followups.c.case_id == case_id)
        .values(answer=answer, answered_at=now)
    )
    await sla.disarm(session, case_id, ClockStep.followup)
    answered = CaseFollowupAnswered(
        case_id=case_id, department=department, answer=answer, answered_at=now
    )
    await runtime.emit(session, answered, handledby=department)
    return answered


async def followup_row(session: AsyncSession, case_id: str) -> dict[str, Any]:
    row = (
        await session.execute(select(models.followups).where(models.followups.c.case_id == case_id))
    ).one()
    return {
        "case_id": row.case_id,
        "department": row.department,
        "rating": row.rating,
        "comment": row.comment,
        "opened_at": row.opened_at,
        "deadline": row.deadline,
    }


async def handover_problems(session: AsyncSession, *, limit: int) -> list[dict[str, Any]]:
    rows = await session.execute(
        select(cases)
        .where(cases.c.handover_problem.is_not(None))
        .order_by(cases.c.updated_at.desc())
        .limit(limit)
    )
    return [
        {
            "case_id": r.case_id,
            "department": r.department,
            "office_code": (r.route or {}).get("entrusted_receiver"),
            "problem": r.handover_problem,
            "updated_at": r.updated_at,
        }
        for r in rows
    ]


async def open_followups(
    session: AsyncSession, *, department: str, limit: int
) -> list[dict[str, Any]]:
    rows = await session.execute(
        select(models.followups)
        .where(
            models.followups.c.department == department, models.followups.c.answered_at.is_(None)
        )
        .order_by(models.followups.c.deadline.asc().nulls_last(), models.followups.c.opened_at)
        .limit(limit)
    )
    return [
        {
            "case_id": r.case_id,
            "department": r.department,
            "rating": r.rating,
            "comment": r.comment,
            "opened_at": r.opened_at,
            "deadline": r.deadline,
        }
        for r in rows
    ]


# -- the SLA board (operators) -----------------------------------------------------------------


async def sla_board(
    session: AsyncSession, *, today: date, department: str | None
) -> list[dict[str, Any]]:
    """Per department: open cases, those warned, overdue (deadline day over), with an unknown
    deadline, and the nearest deadline; most pressing first."""
    timers = models.clock_timers
    open_ = cases.c.status.in_([s.value for s in review.OPEN_STATUSES])
    warned = (
        select(timers.c.case_id)
        .where(
            timers.c.case_id == cases.c.case_id,
            timers.c.step == ClockStep.decision.value,
            timers.c.fired_at.is_not(None),
            timers.c.point < 1,
        )
        .exists()
    )
    overdue = func.count().filter(cases.c.deadline < today)
    query = (
        select(
            cases.c.department,
            func.count().label("open"),
            func.count().filter(warned).label("warned"),
            overdue.label("overdue"),
            func.count()
            .filter(cases.c.deadline.is_(None), cases.c.time_limit_days > 0)
            .label("unknown_deadline"),
            func.min(cases.c.deadline).label("next_deadline"),
        )
        .where(open_, cases.c.department.is_not(None))
        .group_by(cases.c.department)
        .order_by(overdue.desc(), func.count().filter(warned).desc(), cases.c.department)
    )
    if department is not None:
        query = query.where(cases.c.department == department)
    return [dict(r._mapping) for r in await session.execute(query)]


async def cases_at_risk(
    session: AsyncSession, *, until: date, department: str | None, limit: int
) -> list[dict[str, Any]]:
    """Open cases whose deadline falls by `until` (overdue ones included), or is unknown."""
    query = (
        select(
            cases.c.case_id,
            cases.c.department,
            cases.c.status,
            cases.c.deadline,
            cases.c.accepted_at,
            cases.c.item,
        )
        .where(
            cases.c.status.in_([s.value for s in review.OPEN_STATUSES]),
            (cases.c.deadline <= until)
            | (cases.c.deadline.is_(None) & (cases.c.time_limit_days > 0)),
        )
        .order_by(cases.c.deadline.asc().nulls_first(), cases.c.case_id)
        .limit(limit)
    )
    if department is not None:
        query = query.where(cases.c.department == department)
    return [
        {
            "case_id": r.case_id,
            "department": r.department,
            "status": r.status,
            "deadline": r.deadline,
            "accepted_at": r.accepted_at,
            "item_code": (r.item or {}).get("code"),
        }
        for r in await session.execute(query)
    ]
