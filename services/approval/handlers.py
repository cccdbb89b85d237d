"""approval's event handlers and commands: take routed cases, apply decisions (from REST or
Kafka, the same path), follow withdrawals, supplements and bad ratings, answer follow-ups, and
keep the durable SLA timers. The rules themselves live in `domain` (pure); these functions lock,
save and emit in the caller's transaction, over the process's parts (`Approval`). A command that
cannot apply returns the domain's `Refusal` (services.common.refusals); reads are in `queries`.

Durable SLA timers: warnings at shares of the committed limit, overdue at 100% (and the same for
follow-ups), fired exactly once per case, step and point. Timers are rows written in the same
transaction as the state that sets them; a `ClockScheduler` in every approval process fires the
due ones with `FOR UPDATE SKIP LOCKED`, writing the event to the outbox and `fired_at` in one
transaction. So two processes never fire the same timer, a restart loses none, and a fired timer
is never re-armed by a later reschedule.

Deferral (容缺受理): a case taken with deferred materials gets one more timer, its lapse at the
end of the deferral's due day (step `deferral`). It is fired by `fire_due_lapses`, which locks
the case before the timer (the order a decision takes), so a late material and the lapse never
both apply: the one that commits first wins, the other finds nothing left to do.

Commitment (告知承诺): an approval that takes effect for a case with committed materials opens
its verification (`verifications`), with warnings and overdue as timers of step
`verification`; the department's answer closes it or, on a breach, revokes the decision.

Bundles (一件事, DESIGN.md §8): every event about a member names its bundle (the case's
`bundle_id`, from its routed event or from the bundle's own event, whichever came first). The
bundle's clock runs from its first member acceptance for the bundle's time limit, as timers of
step `bundle` keyed by the bundle id (warnings and overdue as `gov.bundle.sla_warning.v1` /
`gov.bundle.overdue.v1` for the lead department), and stops when every member is decided or
ended. It is reviewed, under the bundle row's lock (taken after the member's case row, never
before), by every event that can move it: the bundle's submission or withdrawal, a member's
acceptance, decision, withdrawal or termination; so either order of topics ends the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from prometheus_client import Counter
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.catalog import Calendar
from contracts.common import CaseStatus, Path
from contracts.events import (
    BundleOverdue,
    BundleSlaWarning,
    BundleSubmitted,
    BundleWithdrawn,
    CaseFollowupAnswered,
    CaseFollowupOpened,
    CaseOverdue,
    CaseRated,
    CaseRouted,
    CaseSlaWarning,
    CaseSupplemented,
    CaseWithdrawn,
    CatalogPublished,
    ClockStep,
    DecisionMade,
)
from contracts.rest import DecisionRequest, VerificationResult
from services.approval import models, queries
from services.approval.domain import clock, review
from services.approval.domain.clock import local_date
from services.approval.domain.review import CaseState, Decision, Outcome, Unrouted, Verified
from services.common import audit
from services.common.catalog_follower import CatalogFollower
from services.common.consumer import PermanentError
from services.common.db import bundle_of, driver_connection, locked_row, unit_of_work
from services.common.envelope import Envelope
from services.common.handover import HandoverTrust, load_trust, verify_handover
from services.common.logs import get_logger
from services.common.refusals import Refusal
from services.common.rows import insert_rows
from services.common.service import ServiceRuntime
from services.common.workdays import WorkCalendar

log = get_logger(__name__)

Calendars = CatalogFollower[WorkCalendar]


@dataclass
class Approval:
    """The parts of one approval process (built by `app.create_app`): its runtime, its copy of
    the catalog calendars, when SLA warnings fall (shares of the limit), the working days a
    department has to answer a bad rating, and the intake offices' handover keys (`trust`,
    loaded at start-up: outside dev a missing key directory stops the process there)."""

    runtime: ServiceRuntime
    calendars: Calendars
    warning_points: Sequence[float]
    followup_days: int
    trust: HandoverTrust | None = None


async def load_handover_trust(approval: Approval) -> None:
    approval.trust = load_trust(approval.runtime.settings)


DEADLINES_UNKNOWN = Counter(
    "tongban_approval_deadline_unknown_total",
    "Cases accepted without a deadline: past the catalog calendar's covers_until, or no calendar",
)

HANDOVERS_REFUSED = Counter(
    "tongban_approval_handovers_refused_total",
    "Entrusted handovers that failed verification (altered data, bad or missing signature)",
)

cases = models.cases
timers = models.clock_timers
bundles_t = models.bundles
bundle_members_t = models.bundle_members
# The timer step of a deferral's lapse (容缺受理); not a ClockStep: it fires no SLA event.
LAPSE_STEP = "deferral"


class CaseNotYetRouted(Exception):
    """A decision event for a case approval does not know. Not permanent at first: the routed
    event travels on another topic and may still be on its way, so the consumer's bounded
    retries give it time; after them the decision goes to the dead-letter topic."""


# -- the catalog calendar ----------------------------------------------------------------------


def build_calendar(published: CatalogPublished) -> WorkCalendar:
    """The working-day calendar of one catalog version (what approval needs of the catalog)."""
    return WorkCalendar.of(Calendar.model_validate(published.catalog.get("calendar")))


def calendar_for(follower: Calendars, version: int) -> WorkCalendar | None:
    """The calendar of the version the route names; the latest if that one is not known here."""
    calendar = follower.at(version)
    return calendar if calendar is not None else follower.latest


# -- saving a review's outcome -----------------------------------------------------------------


async def _save(session: AsyncSession, state: CaseState, now: datetime) -> None:
    values = queries.case_values(state, now)
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


def _handover_problem(routed: CaseRouted, trust: HandoverTrust | None, now: datetime) -> str | None:
    """Why an entrusted case's handover cannot be trusted, or None when it verifies."""
    assert trust is not None  # loaded at start-up, before any consumer runs
    check = verify_handover(
        routed.handover,
        case_id=routed.case_id,
        application=routed.application,
        trust=trust,
        now=now,
    )
    return None if check.ok else check.describe()


async def take_routed(
    session: AsyncSession, envelope: Envelope, routed: CaseRouted, *, approval: Approval
) -> None:
    """Into the department's worklist, accepted at once (approved too if instant). A case is
    accepted once: a second routed event for it changes nothing. Entrusted intake is taken
    only with a handover that verifies."""
    now = approval.runtime.clock.now()
    route = routed.route
    partner = review.decided_by_partner(route)
    if partner is not None:
        await _remember_partner_case(session, routed.case_id, partner, now=now)
        return
    bundle_id = await bundle_of(session, bundle_members_t, routed.case_id, routed.bundle_id)
    if bundle_id != routed.bundle_id:
        routed = routed.model_copy(update={"bundle_id": bundle_id})
    calendar = calendar_for(approval.calendars, route.catalog_version)
    problem = (
        _handover_problem(routed, approval.trust, now) if route.path is Path.entrusted else None
    )
    if problem:
        HANDOVERS_REFUSED.inc()
        log.error(
            "entrusted handover refused",
            case_id=routed.case_id,
            reason=problem,
            office=route.entrusted_receiver,
        )
    outcome = review.take(routed, now=now, calendar=calendar, handover_problem=problem)
    inserted = await insert_rows(
        session,
        cases,
        [queries.case_values(outcome.state, now)],
        on_conflict_do_nothing=True,
        returning="case_id",
    )
    if not inserted:
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
                bundle_id=bundle_id,
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
    await arm_decision_clock(session, outcome.state, calendar, approval.warning_points)
    await arm_deferral_lapse(session, outcome.state)
    await open_verification(session, approval, outcome, calendar, now=now)
    await _emit(session, approval.runtime, outcome, envelope.traceparent)
    if bundle_id is not None:
        await review_bundle_clock(session, approval, bundle_id, traceparent=envelope.traceparent)


async def _remember_partner_case(
    session: AsyncSession, case_id: str, partner: str, *, now: datetime
) -> None:
    """A case forwarded to partner region `partner` (DESIGN.md §9): nothing is taken here; its
    row only lets the events that still pass through this region be recognised."""
    await session.execute(
        pg_insert(models.cross_region_cases)
        .values(case_id=case_id, partner_city=partner, routed_at=now)
        .on_conflict_do_nothing()
    )
    log.info("case decided by a partner region; not taken here", case_id=case_id, partner=partner)


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
    await arm_timers(
        session,
        case_id=state.case_id,
        department=state.department,
        step=ClockStep.decision,
        points=points,
        deadline=state.deadline,
        bundle_id=state.bundle_id,
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
    approval: Approval,
    case_id: str,
    decision: Decision,
    now: datetime,
    traceparent: str | None = None,
) -> Outcome | Refusal:
    """Apply one decision under the case's row lock, so a REST decision and an event decision
    for the same case never both apply: the second sees the first's result and is refused."""
    case = await queries.load_case(session, case_id, lock=True)
    result = review.decide(case, decision, case_id=case_id, now=now)
    if isinstance(result, Outcome):
        await _save(session, result.state, now)
        if result.state.status is CaseStatus.supplement_requested:
            await pause_timers(session, case_id, ClockStep.decision)
        else:
            await disarm_timers(session, case_id, ClockStep.decision)
        if result.state.status is CaseStatus.denied:  # a denial is never held: nothing lapses
            await disarm_timers(session, case_id, LAPSE_STEP)
        calendar = calendar_for(approval.calendars, result.state.route.catalog_version)
        await open_verification(session, approval, result, calendar, now=now)
        await _emit(session, approval.runtime, result, traceparent)
        if result.state.bundle_id is not None and result.state.status in clock.MEMBER_DECIDED:
            await review_bundle_clock(
                session, approval, result.state.bundle_id, traceparent=traceparent
            )
    return result


async def decision_made(
    session: AsyncSession, envelope: Envelope, made: DecisionMade, *, approval: Approval
) -> None:
    result = await decide_case(
        session,
        approval=approval,
        case_id=made.case_id,
        decision=decision_of(made),
        now=approval.runtime.clock.now(),
        traceparent=envelope.traceparent,
    )
    if isinstance(result, Refusal):
        reason = f"{result.code} ({result.status}): {result.detail}"
        partner = await queries.deciding_partner(session, made.case_id)
        if partner is not None:
            raise PermanentError(f"{reason}; the case is decided in partner region {partner}")
        if result.code == "case_not_found":
            raise CaseNotYetRouted(reason)
        raise PermanentError(reason)
    # Decisions by event are audited like REST ones; the actor is the department system that
    # published it (its CloudEvents source).
    await audit.append(
        session,
        approval.runtime.schema,
        actor=envelope.source,
        role="department_system",
        scope=made.department,
        action="case.decide",
        case_id=made.case_id,
        detail={"decision": made.decision.value, "event_id": envelope.id},
    )


# -- case.intake.v1 ----------------------------------------------------------------------------


async def case_withdrawn(
    session: AsyncSession, envelope: Envelope, event: CaseWithdrawn, *, approval: Approval
) -> None:
    """Withdrawn before the decision: later decisions are refused. A withdrawal that overtakes
    the routing event leaves a row of its own, so the case is never accepted afterwards."""
    now = approval.runtime.clock.now()
    if await queries.deciding_partner(session, event.case_id) is not None:
        return  # decided in the partner region, which stops its own clock (DESIGN.md §9)
    bundle_id = await bundle_of(session, bundle_members_t, event.case_id, event.bundle_id)
    for _attempt in range(2):
        case = await queries.load_case(session, event.case_id, lock=True)
        if isinstance(case, CaseState):
            outcome = review.withdrawn(case, at=event.withdrawn_at)
            if outcome is not None:
                await _save(session, outcome.state, now)
                await disarm_timers(session, case.case_id, ClockStep.decision)
                await disarm_timers(session, case.case_id, LAPSE_STEP)
                if case.bundle_id is not None:
                    await review_bundle_clock(
                        session, approval, case.bundle_id, traceparent=envelope.traceparent
                    )
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
                bundle_id=bundle_id,
                updated_at=now,
            )
            .on_conflict_do_nothing()
            .returning(cases.c.case_id)
        )
        if inserted.scalar() is not None:
            # A member withdrawn before it was routed here (a waiting one whose prerequisite
            # ended, or a whole bundle withdrawn early) is ended for its bundle's clock.
            if bundle_id is not None:
                await review_bundle_clock(
                    session, approval, bundle_id, traceparent=envelope.traceparent
                )
            return
        # The routed event committed meanwhile: withdraw that case instead.


async def case_supplemented(
    session: AsyncSession, envelope: Envelope, event: CaseSupplemented, *, approval: Approval
) -> None:
    """The applicant answered a supplement request: the review resumes with the time that was
    left and the deadline moves. Deferred materials among them are settled: the last one
    publishes a held approval and disarms the lapse. Counter supplements (before routing) and
    materials nobody waits for are none of approval's business."""
    case = await queries.load_case(session, event.case_id, lock=True)
    if not isinstance(case, CaseState):
        return
    calendar = calendar_for(approval.calendars, case.route.catalog_version)
    outcome = review.materials_arrived(
        case, (m.code for m in event.materials), now=event.supplemented_at, calendar=calendar
    )
    if outcome is not None:
        await _save(session, outcome.state, approval.runtime.clock.now())
        if case.status is CaseStatus.supplement_requested:
            await arm_decision_clock(session, outcome.state, calendar, approval.warning_points)
        if case.deferred and not outcome.state.deferred:
            await disarm_timers(session, case.case_id, LAPSE_STEP)
        now = approval.runtime.clock.now()
        await open_verification(session, approval, outcome, calendar, now=now)
        await _emit(session, approval.runtime, outcome, envelope.traceparent)
        # A held approval released (容缺受理): the member is decided for its bundle's clock.
        if outcome.state.bundle_id is not None and outcome.state.status in clock.MEMBER_DECIDED:
            await review_bundle_clock(
                session, approval, outcome.state.bundle_id, traceparent=envelope.traceparent
            )


# -- a new catalog calendar --------------------------------------------------------------------


async def set_known_deadlines(approval: Approval, calendar: WorkCalendar) -> int:
    """A new catalog calendar: the open cases whose deadline was unknown get one now."""
    updated = 0
    async with unit_of_work(approval.runtime.sessions) as session:
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
        now = approval.runtime.clock.now()
        for row in rows:
            state = queries.case_state(row)
            if not isinstance(state, CaseState):
                continue
            outcome = review.deadline_now_known(state, calendar)
            if outcome is None:
                continue
            await _save(session, outcome.state, now)
            await arm_decision_clock(session, outcome.state, calendar, approval.warning_points)
            await _emit(session, approval.runtime, outcome, None)
            updated += 1
    if updated:
        log.info("deadlines set after the calendar was extended", cases=updated)
    return updated


# -- follow-ups of bad ratings (case.delivery.v1) ----------------------------------------------

BAD_RATINGS = frozenset({"dissatisfied", "very_dissatisfied"})


async def case_rated(
    session: AsyncSession, envelope: Envelope, rated: CaseRated, *, approval: Approval
) -> None:
    """A dissatisfied rating opens a follow-up the deciding department must answer within
    `followup_days` working days; overdue like any other clock."""
    if rated.rating.value not in BAD_RATINGS:
        return
    case = await queries.load_case(session, rated.case_id)
    if not isinstance(case, CaseState):
        if await queries.deciding_partner(session, rated.case_id) is not None:
            # Rated at this region's counter after the pickup: the rating travels to the
            # deciding partner region, whose department answers it (DESIGN.md §9).
            return
        raise CaseNotYetRouted(f"rating for case {rated.case_id} unknown to approval")
    opened_at = rated.rated_at
    calendar = calendar_for(approval.calendars, case.route.catalog_version)
    deadline = clock.case_deadline(calendar, local_date(opened_at), approval.followup_days)
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
    points = clock.clock_points(calendar, local_date(opened_at), approval.followup_days, ())
    await arm_timers(
        session,
        case_id=case.case_id,
        department=case.department,
        step=ClockStep.followup,
        points=points,
        deadline=deadline,
        bundle_id=case.bundle_id,
    )
    await approval.runtime.emit(
        session,
        CaseFollowupOpened(
            case_id=case.case_id,
            bundle_id=case.bundle_id,
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
        404,
        "followup_not_found",
        "No follow-up for this case",
        f"Case {case_id} has no follow-up: only a dissatisfied rating opens one.",
    )


async def answer_followup(
    session: AsyncSession,
    *,
    approval: Approval,
    case_id: str,
    department: str,
    answer: str,
    now: datetime,
) -> Refusal | CaseFollowupAnswered:
    """The department's answer to a dissatisfied rating, once; stops its clock."""
    row = (
        await session.execute(
            select(models.followups).where(models.followups.c.case_id == case_id).with_for_update()
        )
    ).first()
    if row is None:
        return followup_not_found(case_id)
    if row.department != department:
        return review.field_refusal(
            403,
            "wrong_department",
            "The follow-up belongs to another department",
            f"Case {case_id}'s follow-up is owed by {row.department}.",
            field="department",
        )
    if row.answered_at is not None:
        return Refusal(
            409,
            "invalid_state",
            "The follow-up is already answered",
            f"Case {case_id}'s follow-up was answered at {row.answered_at}.",
        )
    await session.execute(
        update(models.followups)
        .where(models.followups.c.case_id == case_id)
        .values(answer=answer, answered_at=now)
    )
    await disarm_timers(session, case_id, ClockStep.followup)
    bundle_id = (
        await session.execute(select(cases.c.bundle_id).where(cases.c.case_id == case_id))
    ).scalar()
    answered = CaseFollowupAnswered(
        case_id=case_id, bundle_id=bundle_id, department=department, answer=answer, answered_at=now
    )
    await approval.runtime.emit(session, answered, handledby=department)
    return answered


# -- verifications of commitments (告知承诺) ----------------------------------------------------


async def open_verification(
    session: AsyncSession,
    approval: Approval,
    outcome: Outcome,
    calendar: WorkCalendar | None,
    *,
    now: datetime,
) -> None:
    """An approval taking effect for a case with committed materials: its verification, due
    `verify_days` working days after today, and that clock's warnings and overdue. Opened once
    per case (a second copy of the event finds it there)."""
    verification = review.verification_opened(outcome, now=now, calendar=calendar)
    if verification is None:
        return
    inserted = await session.execute(
        pg_insert(models.verifications)
        .values(queries.verification_values(verification))
        .on_conflict_do_nothing()
        .returning(models.verifications.c.case_id)
    )
    if inserted.scalar() is None:
        return
    if verification.due is None:
        log.error(
            "verification due day unknown: past the catalog calendar", case_id=verification.case_id
        )
    points = clock.clock_points(
        calendar, local_date(now), outcome.state.item.verify_days, approval.warning_points
    )
    await arm_timers(
        session,
        case_id=verification.case_id,
        department=verification.department,
        step=ClockStep.verification,
        points=points,
        deadline=verification.due,
        bundle_id=outcome.state.bundle_id,
    )


async def answer_verification(
    session: AsyncSession,
    *,
    approval: Approval,
    case_id: str,
    department: str,
    result: VerificationResult,
    note: str | None,
    now: datetime,
    traceparent: str | None = None,
) -> Verified | Refusal:
    """The department's finding on the commitments, under the case's row lock (taken before
    the verification's, the order a decision takes): confirmed closes the verification;
    breached revokes the decision. Either way its clock stops. Another department's case is
    404, as a missing one."""
    case = await queries.load_case(session, case_id, lock=True)
    if not isinstance(case, CaseState) or case.department != department:
        return review.case_not_found(case_id)
    verification = await queries.load_verification(session, case_id, lock=True)
    verified = review.verify(case, verification, result, note=note, now=now)
    if isinstance(verified, Refusal):
        return verified
    values = queries.verification_values(verified.verification)
    del values["case_id"]
    await session.execute(
        update(models.verifications).where(models.verifications.c.case_id == case_id).values(values)
    )
    if verified.outcome.state.status is not case.status:
        await _save(session, verified.outcome.state, now)
    await disarm_timers(session, case_id, ClockStep.verification)
    await _emit(session, approval.runtime, verified.outcome, traceparent)
    return verified


# -- the SLA timers (see the guarantees on top) ------------------------------------------------


async def arm_timers(
    session: AsyncSession,
    *,
    case_id: str,
    department: str,
    step: str,
    points: Sequence[clock.ClockPoint],
    deadline: date | None,
    bundle_id: str | None = None,
) -> None:
    """Set (or move) a case's timers; points already fired stay fired."""
    if not points:
        return
    rows = [
        {
            "case_id": case_id,
            "step": str(step),
            "point": Decimal(str(p.point)),
            "department": department,
            "deadline": deadline,
            "due_at": p.due_at,
            "bundle_id": bundle_id,
        }
        for p in points
    ]
    insert = pg_insert(timers).values(rows)
    await session.execute(
        insert.on_conflict_do_update(
            index_elements=[timers.c.case_id, timers.c.step, timers.c.point],
            set_={"due_at": insert.excluded.due_at, "deadline": insert.excluded.deadline},
            where=timers.c.fired_at.is_(None),
        )
    )


async def arm_deferral_lapse(session: AsyncSession, state: CaseState) -> None:
    """The lapse of a case's deferred materials, at the end of their due day; none when nothing
    is deferred or the due day is unknown (past the calendar: logged, never guessed)."""
    if not state.deferred or state.status not in review.LAPSABLE_STATUSES:
        return
    if state.deferred_due is None:
        log.error("deferral due day unknown: no lapse armed", case_id=state.case_id)
        return
    lapse = clock.ClockPoint(clock.OVERDUE_POINT, clock.end_of_day(state.deferred_due), None)
    await arm_timers(
        session,
        case_id=state.case_id,
        department=state.department,
        step=LAPSE_STEP,
        points=[lapse],
        deadline=state.deferred_due,
        bundle_id=state.bundle_id,
    )


async def pause_timers(session: AsyncSession, case_id: str, step: ClockStep) -> None:
    """Waiting for a supplement: nothing falls due until the clock resumes."""
    await session.execute(
        update(timers)
        .where(
            timers.c.case_id == case_id, timers.c.step == step.value, timers.c.fired_at.is_(None)
        )
        .values(due_at=None)
    )


async def disarm_timers(session: AsyncSession, case_id: str, step: str) -> None:
    """Decided, withdrawn or answered: the pending timers go; the fired ones stay as record."""
    await session.execute(
        delete(timers).where(
            timers.c.case_id == case_id, timers.c.step == str(step), timers.c.fired_at.is_(None)
        )
    )


async def fire_due_timers(
    session: AsyncSession, *, runtime: ServiceRuntime, now: datetime, batch: int = 500
) -> int:
    """Fire the timers due at `now` that no other process holds; return how many."""
    due = (
        await session.execute(
            select(timers)
            .where(
                timers.c.fired_at.is_(None),
                timers.c.due_at <= now,
                timers.c.step != LAPSE_STEP,  # `fire_due_lapses`: they change the case
            )
            .order_by(timers.c.due_at)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
    ).all()
    for row in due:
        payload: CaseOverdue | CaseSlaWarning | BundleOverdue | BundleSlaWarning | None
        try:
            if row.step == ClockStep.bundle.value:
                payload = await _bundle_clock_event(session, row)
            else:
                payload = _clock_event(row)
        except ValueError as exc:
            # A row no event can be made of must not block every timer behind it.
            log.error("unusable clock timer skipped", case_id=row.case_id, error=repr(exc))
            continue
        if payload is not None:
            await runtime.emit(session, payload, handledby=row.department)
    if due:
        await session.execute(
            update(timers)
            .where(
                or_(
                    *(
                        and_(
                            timers.c.case_id == r.case_id,
                            timers.c.step == r.step,
                            timers.c.point == r.point,
                        )
                        for r in due
                    )
                )
            )
            .values(fired_at=now)
        )
    return len(due)


async def fire_due_lapses(
    runtime: ServiceRuntime,
    *,
    now: datetime,
    batch: int = 100,
    approval: Approval | None = None,
) -> int:
    """Terminate the cases whose deferred materials lapsed at `now`, each in a transaction of
    its own; return how many. The case is locked before its timer (SKIP LOCKED both: a case
    busy elsewhere waits for the next tick), and the timer is marked fired with the outcome.
    A terminated member moves its bundle's clock (`approval`'s; the scheduler gives it)."""
    async with runtime.sessions() as session:
        due = (
            (
                await session.execute(
                    select(timers.c.case_id)
                    .where(
                        timers.c.step == LAPSE_STEP,
                        timers.c.fired_at.is_(None),
                        timers.c.due_at <= now,
                    )
                    .order_by(timers.c.due_at)
                    .limit(batch)
                )
            )
            .scalars()
            .all()
        )
    fired = 0
    for case_id in due:
        async with unit_of_work(runtime.sessions) as session:
            row = (
                await session.execute(
                    select(cases)
                    .where(cases.c.case_id == case_id)
                    .with_for_update(skip_locked=True)
                )
            ).first()
            timer = (
                await session.execute(
                    select(timers.c.case_id)
                    .where(
                        timers.c.case_id == case_id,
                        timers.c.step == LAPSE_STEP,
                        timers.c.fired_at.is_(None),
                        timers.c.due_at <= now,
                    )
                    .with_for_update(skip_locked=True)
                )
            ).first()
            if row is None or timer is None:
                continue
            state = queries.case_state(row)
            outcome = review.lapse(state, now=now) if isinstance(state, CaseState) else None
            if outcome is not None:
                await _save(session, outcome.state, now)
                for step in (ClockStep.decision, ClockStep.verification):
                    await disarm_timers(session, case_id, step)
                await _emit(session, runtime, outcome, None)
                if outcome.state.bundle_id is not None and approval is not None:
                    await review_bundle_clock(session, approval, outcome.state.bundle_id)
                fired += 1
            await session.execute(
                update(timers)
                .where(timers.c.case_id == case_id, timers.c.step == LAPSE_STEP)
                .values(fired_at=now)
            )
    return fired


def _clock_event(row: Any) -> CaseOverdue | CaseSlaWarning:
    step = ClockStep(row.step)
    if row.point >= 1:
        return CaseOverdue(
            case_id=row.case_id,
            bundle_id=row.bundle_id,
            department=row.department,
            deadline=row.deadline,
            step=step,
        )
    return CaseSlaWarning(
        case_id=row.case_id,
        bundle_id=row.bundle_id,
        department=row.department,
        deadline=row.deadline,
        elapsed_ratio=float(row.point),
        step=step,
    )


class ClockScheduler:
    """Fires due timers every `poll_s`; on a new catalog version, sets deadlines that the old
    calendar could not (`set_known_deadlines`)."""

    BATCH = 500

    def __init__(self, approval: Approval, *, poll_s: float) -> None:
        self.approval = approval
        self.poll_s = poll_s
        self._seen_version: int | None = None
        self._stop = asyncio.Event()
        self.fired = 0

    def stop(self) -> None:
        self._stop.set()

    async def tick(self) -> int:
        runtime = self.approval.runtime
        fired = 0
        while True:
            async with unit_of_work(runtime.sessions) as session:
                n = await fire_due_timers(
                    session, runtime=runtime, now=runtime.clock.now(), batch=self.BATCH
                )
            fired += n
            if n < self.BATCH:
                break
        fired += await fire_due_lapses(runtime, now=runtime.clock.now(), approval=self.approval)
        calendars = self.approval.calendars
        version = calendars.latest_version
        if version is not None and version != self._seen_version:
            await set_known_deadlines(self.approval, calendars.versions[version])
            await set_known_bundle_deadlines(self.approval)
            self._seen_version = version
        self.fired += fired
        return fired

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.tick()
            except Exception as exc:  # the database may be restarting: try again next tick
                log.warning("clock scheduler tick failed", error=repr(exc))
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self.poll_s)
            except TimeoutError:
                pass


# -- bundles (一件事, DESIGN.md §8; see the module docstring) -----------------------------------


# The events whose handlers make their bundle's row when it is not there yet (`locked_row`).
_MAKE_BUNDLE_ROW = (CaseRouted, BundleSubmitted, BundleWithdrawn)


async def lock_in_order(session: AsyncSession, events: Sequence[tuple[Envelope, Any]]) -> None:
    """A reader's batch of several events, one naming a bundle (DESIGN.md §8): its cases and
    then its bundles are locked first, each set in id order, before the events are applied
    in offset order. One event's handler locks its case and then its bundle; a batch doing
    that event after event held one bundle while it waited for its next case, and two
    batches with members of the same bundles in other orders deadlocked (they did under
    bundle load, and were retried). The bundle rows its handlers would make are made here,
    in the same order. A batch that names no bundle locks nothing more."""
    named = {b for _envelope, payload in events if (b := getattr(payload, "bundle_id", None))}
    if not named:
        return
    driver = await driver_connection(session)
    case_ids = sorted(
        {
            c
            for _envelope, payload in events
            if isinstance(c := getattr(payload, "case_id", None), str)
        }
    )
    if case_ids:
        rows = await driver.fetch(
            f"SELECT bundle_id FROM {cases.fullname} WHERE case_id = ANY($1::text[]) "
            "ORDER BY case_id FOR UPDATE",
            case_ids,
        )
        named |= {row[0] for row in rows if row[0] is not None}
    made = {
        p.bundle_id for _envelope, p in events if isinstance(p, _MAKE_BUNDLE_ROW) and p.bundle_id
    }
    # The rows made here are this transaction's alone until it ends; the others, locked.
    await driver.fetch(
        f"WITH made AS (INSERT INTO {bundles_t.fullname} (bundle_id) "
        "SELECT unnest($2::text[]) ORDER BY 1 ON CONFLICT DO NOTHING) "
        f"SELECT bundle_id FROM {bundles_t.fullname} WHERE bundle_id = ANY($1::text[]) "
        "ORDER BY bundle_id FOR UPDATE",
        sorted(named),
        sorted(made),
    )


async def review_bundle_clock(
    session: AsyncSession,
    approval: Approval,
    bundle_id: str,
    *,
    traceparent: str | None = None,
) -> None:
    """Start, move or stop the bundle's clock from what approval knows now (under the bundle
    row's lock): its timers follow `clock.bundle_clock`; once stopped it stays stopped."""
    bundle = await locked_row(session, bundles_t, bundle_id=bundle_id)
    if bundle.bundle_code is None or bundle.decided_at is not None:
        return  # members not known yet (the bundle event reviews it), or stopped for good
    members, version = await queries.bundle_member_clocks(session, bundle_id)
    calendar = (
        calendar_for(approval.calendars, version)
        if version is not None
        else approval.calendars.latest
    )
    now = approval.runtime.clock.now()
    state = clock.bundle_clock(
        calendar,
        members,
        time_limit_days=bundle.time_limit_days,
        warning_points=approval.warning_points,
        withdrawn=bundle.withdrawn_at is not None,
    )
    if state.stopped:
        await session.execute(
            update(bundles_t)
            .where(bundles_t.c.bundle_id == bundle_id)
            .values(decided_at=now, first_accepted_at=state.first_accepted_at)
        )
        await disarm_timers(session, bundle_id, ClockStep.bundle)
        return
    if not state.running:
        return
    await session.execute(
        update(bundles_t)
        .where(bundles_t.c.bundle_id == bundle_id)
        .values(first_accepted_at=state.first_accepted_at, deadline=state.deadline)
    )
    await arm_timers(
        session,
        case_id=bundle_id,
        department=bundle.lead,
        step=ClockStep.bundle,
        points=state.points,
        deadline=state.deadline,
        bundle_id=bundle_id,
    )


async def bundle_submitted(
    session: AsyncSession, envelope: Envelope, submitted: BundleSubmitted, *, approval: Approval
) -> None:
    """A bundle's members, lead and committed limit: its members' cases taken before now name
    it too, and its clock starts if a member is accepted already."""
    bundle_id = submitted.bundle_id
    case_ids = [m.case_id for m in submitted.members]
    if case_ids:
        # Case rows before the bundle's (the order every member event locks them in).
        await session.execute(
            update(cases)
            .where(cases.c.case_id.in_(case_ids), cases.c.bundle_id.is_(None))
            .values(bundle_id=bundle_id)
        )
        await session.execute(
            update(timers)
            .where(
                timers.c.case_id.in_(case_ids),
                timers.c.step != ClockStep.bundle.value,
                timers.c.bundle_id.is_(None),
            )
            .values(bundle_id=bundle_id)
        )
    bundle = await locked_row(session, bundles_t, bundle_id=bundle_id)
    if bundle.bundle_code is not None:
        return  # known before: a copy of the event
    await session.execute(
        update(bundles_t)
        .where(bundles_t.c.bundle_id == bundle_id)
        .values(
            bundle_code=submitted.bundle_code,
            lead=submitted.lead,
            time_limit_days=submitted.time_limit_days,
            submitted_at=submitted.submitted_at,
        )
    )
    if case_ids:
        await session.execute(
            pg_insert(bundle_members_t)
            .values(
                [
                    {
                        "case_id": m.case_id,
                        "bundle_id": bundle_id,
                        "item_code": m.item_code,
                        "position": position,
                    }
                    for position, m in enumerate(submitted.members)
                ]
            )
            .on_conflict_do_nothing()
        )
    await review_bundle_clock(session, approval, bundle_id, traceparent=envelope.traceparent)


async def bundle_withdrawn(
    session: AsyncSession, envelope: Envelope, withdrawn: BundleWithdrawn, *, approval: Approval
) -> None:
    """The whole bundle withdrawn: its clock stops (the members' own withdrawals follow on
    case.intake.v1; the decided ones keep their decisions)."""
    await locked_row(session, bundles_t, bundle_id=withdrawn.bundle_id)
    await session.execute(
        update(bundles_t)
        .where(bundles_t.c.bundle_id == withdrawn.bundle_id, bundles_t.c.withdrawn_at.is_(None))
        .values(withdrawn_at=withdrawn.withdrawn_at)
    )
    await review_bundle_clock(
        session, approval, withdrawn.bundle_id, traceparent=envelope.traceparent
    )


async def _bundle_clock_event(
    session: AsyncSession, row: Any
) -> BundleOverdue | BundleSlaWarning | None:
    """The warning or overdue of a bundle's timer, naming the members not decided yet; None
    when every member is decided by now (the clock was stopping as it fell due)."""
    members, _version = await queries.bundle_member_clocks(session, row.case_id)
    open_members = clock.open_members(members)
    if not open_members:
        return None
    if row.point >= 1:
        return BundleOverdue(
            bundle_id=row.case_id,
            lead=row.department,
            deadline=row.deadline,
            open_members=open_members,
        )
    return BundleSlaWarning(
        bundle_id=row.case_id,
        lead=row.department,
        deadline=row.deadline,
        elapsed_ratio=float(row.point),
        open_members=open_members,
    )


async def set_known_bundle_deadlines(approval: Approval) -> int:
    """A new catalog calendar: running bundle clocks whose deadline was unknown get one."""
    async with approval.runtime.sessions() as session:
        ids = (
            (
                await session.execute(
                    select(bundles_t.c.bundle_id).where(
                        bundles_t.c.deadline.is_(None),
                        bundles_t.c.first_accepted_at.is_not(None),
                        bundles_t.c.decided_at.is_(None),
                    )
                )
            )
            .scalars()
            .all()
        )
    for bundle_id in ids:
        async with unit_of_work(approval.runtime.sessions) as session:
            await review_bundle_clock(session, approval, bundle_id)
    return len(ids)
