"""The review of one case at its deciding department (pure: no I/O, the clock passed in).

States and transitions (DESIGN.md §1, §4):

    (routed) --take--> accepted --approve--------------> approved
                          |     --deny (legal basis)---> denied
                          |     --request_supplement---> supplement_requested
                          |                                  |
                          +<--------- supplemented ----------+
    accepted | supplement_requested --withdrawn--> withdrawn

  With deferred materials outstanding (容缺受理, DESIGN.md §7):

    accepted --approve--> approval_held --last deferred material arrives--> approved
    accepted | supplement_requested | approval_held --deferral due passes--> terminated

  With committed materials (告知承诺, DESIGN.md §7), from the moment the approval takes effect:

    approved --verification: confirmed--> approved (the verification closes)
    approved --verification: breached---> revoked

- Acceptance is automatic: a routed case is accepted the moment approval takes it, and an
  instant item (即办件) is approved in the same step. A department's `accept` decision is
  therefore always refused as `invalid_state` (the case is already accepted, or past that).
- A denial must state its legal basis; a supplement request lists every missing material at
  once (一次性告知), so a second request while one is pending is `invalid_state` too.
- Deferral: a case taken with deferred materials is reviewed as usual (its legal clock runs:
  the materials are the applicant's to bring, not a pause of the review). An approval while
  one is outstanding is recorded and held; `approved` follows when the last one arrives. A
  denial is never held. If the deferral's due day ends first, the case is `terminated`.
- Commitment: an approval that takes effect (at once, or released when the last deferred
  material arrives) for a case with committed materials opens a verification, due
  `verify_days` working days after that day. Confirmed, it closes and the decision stands;
  breached, the decision is revoked (`gov.case.revoked.v1`, reason `commitment_breached`).
- A case routed on the path `cross_region` (DESIGN.md §9) is decided by the partner region
  it was forwarded to: it is not taken here at all (`decided_by_partner`).
- approved, denied, withdrawn, terminated and revoked are final here (an approved case still
  takes its verification); approval_held is decided (not
  withdrawable, takes no other decision) and waits only for the materials.

Each transition returns the case's new state and the events to emit with it, or a `Refusal`
(services.common.refusals) carrying the stable machine code and HTTP status both edges (REST,
Kafka) report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime

from contracts.common import Application, CaseStatus, ItemSnapshot, Path, Route
from contracts.events import (
    CaseAccepted,
    CaseApprovalHeld,
    CaseApproved,
    CaseDeadlineChanged,
    CaseDeadlineUnknown,
    CaseDenied,
    CaseEvent,
    CaseHandoverRefused,
    CaseRevoked,
    CaseRouted,
    CaseSupplementRequested,
    CaseTerminated,
    CaseVerified,
    DecisionKind,
)
from contracts.rest import VerificationResult, VerificationStatus
from services.approval.domain import clock
from services.approval.domain.clock import local_date
from services.common.refusals import FieldError, Refusal
from services.common.workdays import WorkCalendar

# Cases still waiting for their department: the worklist.
OPEN_STATUSES = frozenset({CaseStatus.accepted, CaseStatus.supplement_requested})
DECIDED_STATUSES = frozenset({CaseStatus.approved, CaseStatus.denied, CaseStatus.approval_held})
# Cases whose deferred materials may still lapse (容缺受理): the due day ending terminates them.
LAPSABLE_STATUSES = frozenset({*OPEN_STATUSES, CaseStatus.approval_held})
LAPSED = "deferred_materials_lapsed"
BREACHED = "commitment_breached"  # the reason of a decision revoked by a false commitment
# The applicant may withdraw until the department decides.
WITHDRAWABLE = OPEN_STATUSES

# Which decision each state takes.
ALLOWED: dict[DecisionKind, frozenset[CaseStatus]] = {
    DecisionKind.accept: frozenset(),  # acceptance happens on routing, never by decision
    DecisionKind.approve: frozenset({CaseStatus.accepted}),
    DecisionKind.deny: frozenset({CaseStatus.accepted}),
    DecisionKind.request_supplement: frozenset({CaseStatus.accepted}),
}


@dataclass(frozen=True)
class Pause:
    """One supplement round: the clock stops at `requested_at` until `supplemented_at`."""

    requested_at: datetime
    supplemented_at: datetime | None = None


@dataclass(frozen=True)
class CaseState:
    """A routed case as its deciding department holds it."""

    case_id: str
    department: str
    status: CaseStatus
    item: ItemSnapshot
    route: Route
    application: Application
    accepted_at: datetime | None  # None: withdrawn before routing reached approval
    deadline: date | None
    time_limit_days: int
    missing_materials: tuple[str, ...] = ()
    pauses: tuple[Pause, ...] = ()
    decision: DecisionKind | None = None
    reason: str | None = None
    legal_basis: str | None = None
    decided_at: datetime | None = None
    withdrawn_at: datetime | None = None
    # Entrusted intake whose signed handover failed verification: held, never accepted.
    handover_problem: str | None = None
    # Deferred materials (容缺受理) not yet brought, and the last day to bring them.
    deferred: tuple[str, ...] = ()
    deferred_due: date | None = None
    # The bundle it is a member of (一件事, DESIGN.md §8): every event about it names it.
    bundle_id: str | None = None

    @property
    def instant(self) -> bool:
        return self.route.instant or self.item.instant

    @property
    def intake_office(self) -> str | None:
        return (
            self.route.intake_office
            or self.route.entrusted_receiver
            or self.application.office_code
        )


@dataclass(frozen=True)
class Unrouted:
    """A case approval never had routed to it, known only because it was withdrawn (the
    withdrawal overtook the routing event on another topic). It takes no decision."""

    case_id: str
    status: CaseStatus = CaseStatus.withdrawn


@dataclass(frozen=True)
class Decision:
    """A department's decision, from the REST body or a `gov.case.decision.v1` event."""

    department: str
    kind: DecisionKind
    reason: str | None = None
    legal_basis: str | None = None
    missing_materials: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """The new state and the events to emit in the same transaction."""

    state: CaseState
    events: tuple[CaseEvent, ...] = ()


# -- taking a routed case ----------------------------------------------------------------------


def decided_by_partner(route: Route) -> str | None:
    """The partner region's city code when the route forwards the case there (path
    `cross_region`, DESIGN.md §9): that region accepts and decides it, so this region's
    approval takes nothing (no acceptance, no clock, no worklist row). None for every other
    route."""
    return route.handled_by if route.path is Path.cross_region else None


def compute_deadline(
    calendar: WorkCalendar | None,
    accepted_at: datetime,
    time_limit_days: int,
    pauses: tuple[Pause, ...] = (),
) -> date | None:
    """The `time_limit_days`-th working day after the local acceptance date, the finished
    supplement rounds not counting; None (unknown, an alarm) past the calendar's
    `covers_until` or without any calendar."""
    return clock.case_deadline(
        calendar,
        local_date(accepted_at),
        time_limit_days,
        clock.paused_intervals((p.requested_at, p.supplemented_at) for p in pauses),
    )


def take(
    routed: CaseRouted,
    *,
    now: datetime,
    calendar: WorkCalendar | None,
    handover_problem: str | None = None,
) -> Outcome:
    """Accept a routed case at once (the legal clock starts); approve an instant item too.

    Entrusted intake (委托收件) is accepted as of its signed handover: the basic-level office
    took the file for the municipal department, so its time stamp anchors the clock. A
    handover that fails verification is held (status stays `routed`) and flagged instead.
    """
    route = routed.route
    limit = route.time_limit_days
    accepted_at = now
    if route.path is Path.entrusted and routed.handover is not None and not handover_problem:
        accepted_at = min(routed.handover.signed_at, now)
    state = CaseState(
        case_id=routed.case_id,
        bundle_id=routed.bundle_id,
        department=route.handled_by,
        status=CaseStatus.accepted,
        item=routed.item,
        route=route,
        application=routed.application,
        accepted_at=accepted_at,
        deadline=compute_deadline(calendar, accepted_at, limit),
        time_limit_days=limit,
    )
    deferred = deferred_materials(routed.application)
    if deferred:
        due = clock.deferral_due(calendar, local_date(accepted_at), routed.item.defer_days)
        state = replace(state, deferred=deferred, deferred_due=due)
    if handover_problem:
        state = replace(
            state,
            status=CaseStatus.routed,
            accepted_at=None,
            deadline=None,
            handover_problem=handover_problem,
            deferred_due=None,
        )
        refused = CaseHandoverRefused(
            case_id=state.case_id,
            bundle_id=state.bundle_id,
            department=state.department,
            office_code=route.entrusted_receiver or routed.application.office_code,
            reason=handover_problem,
        )
        return Outcome(state, (refused,))
    accepted = CaseAccepted(
        case_id=state.case_id,
        bundle_id=state.bundle_id,
        department=state.department,
        accepted_at=accepted_at,
        deadline=state.deadline,
        time_limit_days=limit,
        deferred_due=state.deferred_due,
    )
    events: list[CaseEvent] = [accepted]
    if state.instant:
        approved = _approve(state, Decision(state.department, DecisionKind.approve), now=now)
        state = approved.state
        events.extend(approved.events)
    elif state.deadline is None and calendar is not None:
        events.append(
            CaseDeadlineUnknown(
                case_id=state.case_id,
                bundle_id=state.bundle_id,
                department=state.department,
                accepted_on=local_date(accepted_at),
                time_limit_days=limit,
                covers_until=calendar.covers_until,
            )
        )
    return Outcome(state, tuple(events))


def deadline_now_known(case: CaseState, calendar: WorkCalendar) -> Outcome | None:
    """A newer calendar covers the deadline that was unknown: set it (once)."""
    if case.deadline is not None or case.accepted_at is None or case.status not in OPEN_STATUSES:
        return None
    new = compute_deadline(calendar, case.accepted_at, case.time_limit_days, case.pauses)
    if new is None:
        return None
    state = replace(case, deadline=new)
    changed = CaseDeadlineChanged(
        case_id=case.case_id,
        bundle_id=case.bundle_id,
        department=case.department,
        deadline=new,
        reason="calendar_extended",
    )
    return Outcome(state, (changed,))


# -- decisions ---------------------------------------------------------------------------------


def case_not_found(case_id: str) -> Refusal:
    return Refusal(
        404,
        "case_not_found",
        "No such case at approval",
        f"Case {case_id!r} has not been routed to any department (yet).",
    )


def field_refusal(status: int, code: str, title: str, detail: str, *, field: str) -> Refusal:
    """A refusal that names the one field to fix; its `errors` repeat the detail for it."""
    return Refusal(status, code, title, detail, errors=(FieldError(field, detail),))


def decide(
    case: CaseState | Unrouted | None, decision: Decision, *, case_id: str, now: datetime
) -> Outcome | Refusal:
    """Apply a department's decision. Checked in this order: the case exists, it is routed to
    that department, it is in a state that takes this decision, the decision is complete."""
    taken = _takes_decision(case, decision, case_id=case_id)
    if isinstance(taken, Refusal):
        return taken
    if decision.kind is DecisionKind.request_supplement:
        return _request_supplement(taken, decision, now=now)
    if decision.kind is DecisionKind.deny:
        return _deny(taken, decision, now=now)
    assert decision.kind is DecisionKind.approve
    return _approve(taken, decision, now=now)


def _takes_decision(
    case: CaseState | Unrouted | None, decision: Decision, *, case_id: str
) -> CaseState | Refusal:
    """The case, if it exists, is routed to the deciding department and takes this decision
    in its state; else why not."""
    if case is None:
        return case_not_found(case_id)
    if isinstance(case, Unrouted):
        return Refusal(
            409,
            "invalid_state",
            "The case takes no decision in its state",
            f"Case {case_id} is {case.status.value}; it was withdrawn before it was routed.",
        )
    if decision.department != case.department:
        return field_refusal(
            403,
            "wrong_department",
            "The case is not routed to this department",
            f"Case {case_id} is handled by {case.department}, not {decision.department}.",
            field="department",
        )
    if case.status not in ALLOWED[decision.kind]:
        return Refusal(
            409,
            "invalid_state",
            "The case takes no such decision in its state",
            _why_not(case, decision.kind),
        )
    return case


def _request_supplement(case: CaseState, decision: Decision, *, now: datetime) -> Outcome | Refusal:
    """Every missing material at once (一次性告知); the clock pauses from `now`."""
    missing = _unique(decision.missing_materials)
    if not missing:
        return field_refusal(
            422,
            "missing_materials_required",
            "A supplement request lists the missing materials",
            "List every missing material code at once (one-time notification).",
            field="missing_materials",
        )
    state = replace(
        case,
        status=CaseStatus.supplement_requested,
        missing_materials=missing,
        pauses=(*case.pauses, Pause(requested_at=now)),
    )
    requested = CaseSupplementRequested(
        case_id=case.case_id,
        bundle_id=case.bundle_id,
        department=case.department,
        missing_materials=list(missing),
        reason=_clean(decision.reason),
    )
    return Outcome(state, (requested,))


def _deny(case: CaseState, decision: Decision, *, now: datetime) -> Outcome | Refusal:
    """A denial rests on its legal basis, or it is refused."""
    legal_basis = _clean(decision.legal_basis)
    if legal_basis is None:
        return field_refusal(
            422,
            "legal_basis_required",
            "A denial must state its legal basis",
            "Give legal_basis: the law or regulation, and its article, the denial rests on.",
            field="legal_basis",
        )
    state = replace(
        case,
        status=CaseStatus.denied,
        decision=DecisionKind.deny,
        reason=_clean(decision.reason),
        legal_basis=legal_basis,
        decided_at=now,
    )
    return Outcome(state, (_denied(state),))


def _approve(case: CaseState, decision: Decision, *, now: datetime) -> Outcome:
    """Approved; held (recorded, not yet published) while deferred materials are outstanding."""
    state = replace(
        case,
        status=CaseStatus.approved,
        decision=DecisionKind.approve,
        reason=_clean(decision.reason),
        legal_basis=_clean(decision.legal_basis),
        decided_at=now,
    )
    if state.deferred:
        state = replace(state, status=CaseStatus.approval_held)
        held = CaseApprovalHeld(
            case_id=state.case_id,
            bundle_id=state.bundle_id,
            department=state.department,
            decided_at=now,
            outstanding=list(state.deferred),
        )
        return Outcome(state, (held,))
    return Outcome(state, (_approved(state),))


def _why_not(case: CaseState, kind: DecisionKind) -> str:
    where = f"Case {case.case_id} is {case.status.value}"
    if kind is DecisionKind.accept:
        return f"{where}: acceptance is automatic when a case is routed; decide it instead."
    if case.status is CaseStatus.supplement_requested:
        return f"{where}: wait for the supplement of {', '.join(case.missing_materials)}."
    if case.status is CaseStatus.approval_held:
        return f"{where}: it is approved, held until {', '.join(case.deferred)} arrive."
    if case.status in DECIDED_STATUSES:
        return f"{where}: it is already decided."
    if case.status is CaseStatus.revoked:
        return f"{where}: its decision was revoked (a commitment was breached)."
    if case.status is CaseStatus.terminated:
        return f"{where}: its deferred materials were not brought in time."
    if case.status is CaseStatus.withdrawn:
        return f"{where}: the applicant withdrew it."
    return f"{where}; {kind.value} needs it accepted."


# -- what intake tells us ----------------------------------------------------------------------


def supplemented(
    case: CaseState, *, now: datetime, calendar: WorkCalendar | None
) -> Outcome | None:
    """The applicant answered the supplement request: the review resumes with the time that was
    left, the paused days not counting, and the deadline moves accordingly. None when the case
    was not waiting for one."""
    if case.status is not CaseStatus.supplement_requested:
        return None
    pauses = case.pauses
    if pauses and pauses[-1].supplemented_at is None:
        pauses = (*pauses[:-1], replace(pauses[-1], supplemented_at=now))
    state = replace(case, status=CaseStatus.accepted, missing_materials=(), pauses=pauses)
    if case.accepted_at is None:
        return Outcome(state)
    new = compute_deadline(calendar, case.accepted_at, case.time_limit_days, pauses)
    intervals = clock.paused_intervals((p.requested_at, p.supplemented_at) for p in pauses)
    state = replace(state, deadline=new)
    changed = CaseDeadlineChanged(
        case_id=case.case_id,
        bundle_id=case.bundle_id,
        department=case.department,
        deadline=new,
        reason="supplemented",
        paused_working_days=clock.paused_working_days(calendar, intervals) if calendar else 0,
    )
    return Outcome(state, (changed,))


def deferred_materials(application: Application) -> tuple[str, ...]:
    """The material codes the applicant deferred at submission (容缺受理), in its order."""
    return tuple(dict.fromkeys(m.code for m in application.materials if m.deferred))


def materials_arrived(
    case: CaseState, codes: Iterable[str], *, now: datetime, calendar: WorkCalendar | None
) -> Outcome | None:
    """Materials from the applicant (`gov.case.supplemented.v1`): they answer the review's
    supplement request when they bring a requested material, or anything but deferred ones
    (`supplemented`), and they settle the deferred materials among them (`deferred_arrived`).
    None when they change nothing here."""
    given = set(codes)
    answers_request = case.status is CaseStatus.supplement_requested and (
        bool(given & set(case.missing_materials)) or not given <= set(case.deferred)
    )
    resumed = supplemented(case, now=now, calendar=calendar) if answers_request else None
    state = resumed.state if resumed is not None else case
    settled = deferred_arrived(state, given)
    if settled is not None:
        state = settled.state
    events = (resumed.events if resumed else ()) + (settled.events if settled else ())
    if resumed is None and settled is None:
        return None
    return Outcome(state, events)


def deferred_arrived(case: CaseState, codes: Iterable[str]) -> Outcome | None:
    """Deferred materials arrive: they are no longer outstanding; the last one releases a held
    approval (`gov.case.approved.v1`, as of the department's decision). None when none of them
    was outstanding, or the case is past taking them (terminated, withdrawn, denied)."""
    given = set(codes)
    if not (given & set(case.deferred)) or case.status not in LAPSABLE_STATUSES:
        return None
    state = replace(case, deferred=tuple(c for c in case.deferred if c not in given))
    if state.deferred or state.status is not CaseStatus.approval_held:
        return Outcome(state)
    state = replace(state, status=CaseStatus.approved)
    return Outcome(state, (_approved(state),))


def lapse(case: CaseState, *, now: datetime) -> Outcome | None:
    """The deferral's due day is over with materials still outstanding: the case ends
    `terminated` (a held approval never takes effect). None when nothing is outstanding or the
    case has ended otherwise."""
    if not case.deferred or case.status not in LAPSABLE_STATUSES:
        return None
    state = replace(case, status=CaseStatus.terminated)
    terminated = CaseTerminated(
        case_id=case.case_id,
        bundle_id=case.bundle_id,
        department=case.department,
        reason=LAPSED,
        terminated_at=now,
        outstanding=list(case.deferred),
    )
    return Outcome(state, (terminated,))


# -- commitments (告知承诺) --------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    """The check of the commitments an approval rested on: open until the department finds
    them true (`confirmed`) or false (`breached`)."""

    case_id: str
    department: str
    item_code: str
    committed: tuple[str, ...]
    approved_at: datetime
    due: date | None  # None: past the calendar's covers_until (never guessed)
    status: VerificationStatus = VerificationStatus.open
    note: str | None = None
    verified_at: datetime | None = None


@dataclass(frozen=True)
class Verified:
    """A verification answered: its new form, and the case's outcome (revoked on a breach)."""

    verification: Verification
    outcome: Outcome


def committed_materials(application: Application) -> tuple[str, ...]:
    """The material codes the applicant committed to instead of proving, in its order."""
    return tuple(dict.fromkeys(m.code for m in application.materials if m.commitment))


def verification_opened(
    outcome: Outcome, *, now: datetime, calendar: WorkCalendar | None
) -> Verification | None:
    """The verification an outcome opens: when its approval takes effect now (it emits
    `gov.case.approved.v1`: decided, or a held one released) and the case has committed
    materials. None otherwise."""
    state = outcome.state
    committed = committed_materials(state.application)
    if not committed or not any(isinstance(e, CaseApproved) for e in outcome.events):
        return None
    return Verification(
        case_id=state.case_id,
        department=state.department,
        item_code=state.item.code,
        committed=committed,
        approved_at=now,
        due=clock.verification_due(calendar, local_date(now), state.item.verify_days),
    )


def verification_refusal(case_id: str, verification: Verification | None) -> Refusal:
    where = f"Case {case_id}"
    if verification is None:
        detail = f"{where} has no commitments to verify: only an approved case with some has."
    else:
        detail = f"{where}'s verification is already {verification.status.value}."
    return Refusal(409, "invalid_state", "No open verification for this case", detail)


def verify(
    case: CaseState,
    verification: Verification | None,
    result: VerificationResult,
    *,
    note: str | None,
    now: datetime,
) -> Verified | Refusal:
    """The department's finding on an open verification: `confirmed` closes it
    (`gov.case.verified.v1`); `breached` revokes the decision (`gov.case.revoked.v1`, reason
    `commitment_breached`, status `revoked`). Anything but an open one is `invalid_state`."""
    if (
        verification is None
        or verification.status is not VerificationStatus.open
        or case.status is not CaseStatus.approved
    ):
        return verification_refusal(case.case_id, verification)
    note = _clean(note)
    if result is VerificationResult.confirmed:
        closed = replace(
            verification, status=VerificationStatus.confirmed, note=note, verified_at=now
        )
        verified = CaseVerified(
            case_id=case.case_id,
            bundle_id=case.bundle_id,
            department=case.department,
            verified_at=now,
            note=note,
        )
        return Verified(closed, Outcome(case, (verified,)))
    closed = replace(verification, status=VerificationStatus.breached, note=note, verified_at=now)
    revoked = CaseRevoked(
        case_id=case.case_id,
        bundle_id=case.bundle_id,
        department=case.department,
        reason=BREACHED,
        revoked_at=now,
        note=note,
    )
    return Verified(closed, Outcome(replace(case, status=CaseStatus.revoked), (revoked,)))


def withdrawn(case: CaseState, *, at: datetime) -> Outcome | None:
    """Withdrawn before the decision: later decisions are refused. None once decided (the
    decision stands; intake refuses such a withdrawal at its counter anyway)."""
    if case.status not in WITHDRAWABLE:
        return None
    return Outcome(replace(case, status=CaseStatus.withdrawn, withdrawn_at=at))


# -- event payloads ----------------------------------------------------------------------------


def _outcome_fields(state: CaseState) -> dict[str, object]:
    assert state.decided_at is not None
    applicant = state.application.applicant
    return {
        "case_id": state.case_id,
        "bundle_id": state.bundle_id,
        "department": state.department,
        "decided_at": state.decided_at,
        "reason": state.reason,
        "item": state.item,
        "delivery_method": state.application.delivery.method,
        "delivery_address": state.application.delivery.address,
        "intake_office": state.intake_office,
        "level": state.route.level,
        "applicant_name": applicant.name,
        "applicant_id_number": applicant.id_number,
    }


def _approved(state: CaseState) -> CaseApproved:
    return CaseApproved.model_validate(_outcome_fields(state))


def _denied(state: CaseState) -> CaseDenied:
    assert state.legal_basis is not None
    return CaseDenied.model_validate({**_outcome_fields(state), "legal_basis": state.legal_basis})


def _clean(text: str | None) -> str | None:
    text = text.strip() if text else None
    return text or None


def _unique(codes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(c.strip() for c in codes if c.strip()))
