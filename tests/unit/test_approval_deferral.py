"""Deferral (容缺受理) in approval's review (services/approval/domain/review.py) and its due day
(clock.deferral_due): held approvals, late materials, the lapse, and the due-day arithmetic
with holidays, make-up workdays and supplement rounds."""

from __future__ import annotations

from datetime import UTC, date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.catalog import Calendar
from contracts.common import CaseStatus, Material
from contracts.events import CaseApprovalHeld, CaseApproved, CaseTerminated, DecisionKind
from services.approval.domain import clock, review
from services.approval.domain.review import CaseState, Outcome
from services.common.refusals import Refusal
from services.common.workdays import WorkCalendar, is_working_day, working_days_between
from tests.unit.test_approval_review import CALENDAR, DEPT, NOW, decision, make_routed, ok

pytestmark = pytest.mark.unit

LATER = NOW + timedelta(days=1)


def deferred_routed(*codes: str, instant: bool = False, defer_days: int = 5) -> object:
    routed = make_routed(instant=instant)
    materials = [Material(code="M01", sha256="a" * 64)] + [
        Material(code=code, deferred=True) for code in codes
    ]
    return routed.model_copy(
        update={
            "application": routed.application.model_copy(update={"materials": materials}),
            "item": routed.item.model_copy(update={"defer_days": defer_days}),
        }
    )


def taken(*codes: str, instant: bool = False) -> Outcome:
    return review.take(deferred_routed(*codes, instant=instant), now=NOW, calendar=CALENDAR)  # type: ignore[arg-type]


def ask_for(case: CaseState, *codes: str) -> Outcome:
    """The department asks for a supplement of `codes` the day after acceptance."""
    request = decision(DecisionKind.request_supplement, missing_materials=codes)
    return ok(review.decide(case, request, case_id=case.case_id, now=LATER))


def test_acceptance_sets_the_due_day_and_tells_intake() -> None:
    outcome = taken("M02", "M03")
    state = outcome.state
    assert state.status is CaseStatus.accepted and state.deferred == ("M02", "M03")
    # Accepted on Wed 30 September (local); 1-2 October are holidays, 10 October a make-up
    # workday: the 5th working day after is Fri 9 October.
    assert state.deferred_due == date(2026, 10, 9)
    (accepted,) = outcome.events
    assert accepted.deferred_due == date(2026, 10, 9)  # type: ignore[attr-defined]


def test_nothing_deferred_nothing_due() -> None:
    outcome = taken()
    assert outcome.state.deferred == () and outcome.state.deferred_due is None
    assert outcome.events[0].deferred_due is None  # type: ignore[attr-defined]


def test_an_approval_is_held_while_a_deferred_material_is_outstanding() -> None:
    case = taken("M02", "M03").state
    held = ok(review.decide(case, decision(DecisionKind.approve), case_id=case.case_id, now=LATER))
    assert held.state.status is CaseStatus.approval_held
    assert held.state.decision is DecisionKind.approve and held.state.decided_at == LATER
    (event,) = held.events
    assert isinstance(event, CaseApprovalHeld)
    assert event.outstanding == ["M02", "M03"] and event.department == DEPT
    # Decided: no other decision, no withdrawal.
    again = review.decide(
        held.state, decision(DecisionKind.deny, legal_basis="x"), case_id=case.case_id, now=LATER
    )
    assert isinstance(again, Refusal) and again.code == "invalid_state"
    assert review.withdrawn(held.state, at=LATER) is None

    first = review.deferred_arrived(held.state, ["M02"])
    assert first is not None and first.events == ()
    assert first.state.status is CaseStatus.approval_held and first.state.deferred == ("M03",)
    last = review.deferred_arrived(first.state, ["M03"])
    assert last is not None and last.state.status is CaseStatus.approved
    (approved,) = last.events
    assert isinstance(approved, CaseApproved)
    assert approved.decided_at == LATER  # as of the department's decision
    assert review.lapse(last.state, now=LATER) is None  # nothing left to lapse


def test_materials_brought_before_the_decision_leave_a_plain_approval() -> None:
    case = taken("M02").state
    arrived = review.materials_arrived(case, ["M02"], now=LATER, calendar=CALENDAR)
    assert arrived is not None and arrived.events == () and arrived.state.deferred == ()
    approved = ok(
        review.decide(
            arrived.state, decision(DecisionKind.approve), case_id=case.case_id, now=LATER
        )
    )
    assert approved.state.status is CaseStatus.approved
    assert [e.TYPE for e in approved.events] == [CaseApproved.TYPE]


def test_a_denial_is_never_held_and_nothing_lapses_after_it() -> None:
    case = taken("M02").state
    denied = ok(
        review.decide(
            case,
            decision(DecisionKind.deny, legal_basis="《行政许可法》第三十八条"),
            case_id=case.case_id,
            now=LATER,
        )
    )
    assert denied.state.status is CaseStatus.denied
    assert review.lapse(denied.state, now=LATER) is None
    assert review.deferred_arrived(denied.state, ["M02"]) is None


@pytest.mark.parametrize("approve_first", [False, True])
def test_the_lapse_terminates_an_open_or_held_case(approve_first: bool) -> None:
    case: CaseState = taken("M02", "M03").state
    if approve_first:
        case = ok(
            review.decide(case, decision(DecisionKind.approve), case_id=case.case_id, now=LATER)
        ).state
    case = review.deferred_arrived(case, ["M03"]).state  # type: ignore[union-attr]
    lapsed = review.lapse(case, now=LATER)
    assert lapsed is not None and lapsed.state.status is CaseStatus.terminated
    (event,) = lapsed.events
    assert isinstance(event, CaseTerminated)
    assert event.reason == "deferred_materials_lapsed" and event.outstanding == ["M02"]
    # Ended: late materials and decisions change nothing.
    assert review.deferred_arrived(lapsed.state, ["M02"]) is None
    refused = review.decide(
        lapsed.state, decision(DecisionKind.approve), case_id=case.case_id, now=LATER
    )
    assert isinstance(refused, Refusal) and refused.code == "invalid_state"


def test_an_instant_item_with_a_deferred_material_is_held_at_once() -> None:
    outcome = taken("M02", instant=True)
    assert outcome.state.status is CaseStatus.approval_held
    assert [e.TYPE for e in outcome.events] == ["gov.case.accepted.v1", CaseApprovalHeld.TYPE]


def test_only_deferred_materials_do_not_answer_a_supplement_request() -> None:
    case = taken("M02").state
    asked = ask_for(case, "M04")
    late = review.materials_arrived(asked.state, ["M02"], now=LATER, calendar=CALENDAR)
    assert late is not None and late.state.status is CaseStatus.supplement_requested
    both = review.materials_arrived(asked.state, ["M02", "M04"], now=LATER, calendar=CALENDAR)
    assert both is not None and both.state.status is CaseStatus.accepted
    assert both.state.deferred == ()
    assert [e.TYPE for e in both.events] == ["gov.case.deadline_changed.v1"]


def test_a_supplement_round_does_not_move_the_due_day() -> None:
    """The deferral runs on the applicant's side: set at acceptance, it stays."""
    case = taken("M02").state
    asked = ask_for(case, "M04")
    resumed = review.supplemented(asked.state, now=LATER + timedelta(days=5), calendar=CALENDAR)
    assert resumed is not None and resumed.state.deadline != case.deadline
    assert resumed.state.deferred_due == case.deferred_due


# -- the due day -------------------------------------------------------------------------------

DAYS = st.dates(min_value=date(2026, 1, 1), max_value=date(2026, 12, 31))


def calendar_of(holidays: set[date], workdays: set[date]) -> WorkCalendar:
    """A calendar of the drawn holidays and make-up workdays (weekend days only)."""
    return WorkCalendar.of(
        Calendar(
            covers_until=date(2027, 12, 31),
            holidays=sorted(holidays - workdays),
            workdays=sorted(w for w in workdays if w.weekday() >= 5),
        )
    )


def nth_working_day_after(calendar: WorkCalendar, start: date, n: int) -> date:
    """Reference, day by day: holidays never count, make-up workdays always do."""
    day, counted = start, 0
    while counted < n:
        day += timedelta(days=1)
        counted += (day in calendar.workdays) or (
            day.weekday() < 5 and day not in calendar.holidays
        )
    return day


@given(
    accepted_on=DAYS,
    defer_days=st.integers(min_value=1, max_value=30),
    holidays=st.sets(DAYS, max_size=25),
    workdays=st.sets(DAYS, max_size=6),
)
def test_the_due_day_is_the_defer_days_th_working_day_after_acceptance(
    accepted_on: date, defer_days: int, holidays: set[date], workdays: set[date]
) -> None:
    calendar = calendar_of(holidays, workdays)
    due = clock.deferral_due(calendar, accepted_on, defer_days)
    assert due is not None and due > accepted_on
    assert is_working_day(calendar, due)
    assert working_days_between(calendar, accepted_on, due) == defer_days
    assert due == nth_working_day_after(calendar, accepted_on, defer_days)
    # The lapse falls when that day is over, city time.
    assert clock.local_date(clock.end_of_day(due) - timedelta(microseconds=1)) == due
    assert clock.local_date(clock.end_of_day(due)) == due + timedelta(days=1)


@given(accepted_on=st.dates(min_value=date(2027, 12, 1), max_value=date(2027, 12, 31)))
def test_a_due_day_past_the_calendar_is_unknown(accepted_on: date) -> None:
    assert clock.deferral_due(CALENDAR, accepted_on, 30) is None
    assert clock.deferral_due(None, accepted_on, 1) is None


def test_the_due_day_counts_from_the_local_acceptance_date() -> None:
    # 16:30 UTC on 29 September is 00:30 on 30 September in the city.
    assert taken("M02").state.deferred_due == clock.deferral_due(CALENDAR, date(2026, 9, 30), 5)
    assert NOW.astimezone(UTC).date() == date(2026, 9, 29)
