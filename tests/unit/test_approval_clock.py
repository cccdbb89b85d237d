"""The legal clock (services/approval/domain/clock.py) and the lifecycle rules built on it in
review: supplement pauses, deadline unknown past the calendar, calendar extension, handover
refusal."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.catalog import Calendar
from contracts.common import CaseStatus, Handover, Path
from contracts.events import DecisionKind
from services.approval.domain import clock, review
from services.approval.domain.review import CaseState, Decision
from services.common.city import CITY_TZ
from services.common.workdays import WorkCalendar, deadline, is_working_day
from tests.unit.test_approval_review import CALENDAR, make_routed

pytestmark = pytest.mark.unit

CITY = CITY_TZ


def at(day: date, hour: int = 10) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=CITY)


def test_a_same_day_supplement_pauses_nothing() -> None:
    monday = date(2026, 11, 30)
    assert clock.paused_intervals([(at(monday, 9), at(monday, 17))]) == ()


def test_the_request_day_counts_and_the_answer_day_does_not() -> None:
    monday, wednesday = date(2026, 11, 30), date(2026, 12, 2)
    assert clock.paused_intervals([(at(monday), at(wednesday))]) == (
        (date(2026, 12, 1), wednesday),
    )
    assert clock.paused_intervals([(at(monday), None)]) == ()  # still waiting


def test_warnings_and_overdue_fall_at_the_end_of_their_working_day() -> None:
    accepted = date(2026, 11, 27)  # a Friday
    points = clock.clock_points(CALENDAR, accepted, 10, [0.5, 0.8])
    assert [p.point for p in points] == [0.5, 0.8, 1.0]
    assert [p.day for p in points] == [date(2026, 12, 4), date(2026, 12, 9), date(2026, 12, 11)]
    assert points[-1].due_at == datetime(2026, 12, 12, 0, 0, tzinfo=CITY)
    assert clock.clock_points(CALENDAR, accepted, 0, [0.5]) == []  # instant: no clock


def test_points_past_the_calendar_are_unknown() -> None:
    short = WorkCalendar.of(Calendar(covers_until=date(2026, 12, 5), holidays=[], workdays=[]))
    points = clock.clock_points(short, date(2026, 11, 27), 10, [0.5])
    assert points[0].due_at is not None and points[1].due_at is None


@given(
    start=st.dates(min_value=date(2026, 1, 1), max_value=date(2027, 6, 30)),
    limit=st.integers(min_value=1, max_value=30),
    pause_after=st.integers(min_value=0, max_value=10),
    pause_len=st.integers(min_value=0, max_value=20),
)
def test_paused_working_days_push_the_deadline_back_by_as_many(
    start: date, limit: int, pause_after: int, pause_len: int
) -> None:
    """A pause that starts before the deadline moves it by exactly its working days."""
    original = deadline(CALENDAR, start, limit)
    assert original is not None
    p_start = start + timedelta(days=1 + pause_after)
    p_end = p_start + timedelta(days=pause_len)
    if p_start > original:
        return
    paused = clock.paused_working_days(CALENDAR, [(p_start, p_end)])
    moved = clock.case_deadline(CALENDAR, start, limit, [(p_start, p_end)])
    # Reference, day by day: the limit-th working day that is not in the pause.
    day, counted = start, 0
    while counted < limit:
        day += timedelta(days=1)
        if is_working_day(CALENDAR, day) and not p_start <= day <= p_end:
            counted += 1
    assert moved == day
    assert paused >= 0 and (moved or date.max) >= original


def accepted(**overrides: object) -> CaseState:
    outcome = review.take(
        make_routed(time_limit_days=10),
        now=datetime(2026, 11, 27, 2, tzinfo=UTC),
        calendar=CALENDAR,
    )
    return replace(outcome.state, **overrides)  # type: ignore[arg-type]


def test_supplement_rounds_move_the_deadline_by_the_paused_working_days() -> None:
    case = accepted()
    assert case.deadline == date(2026, 12, 11)
    asked = review.decide(
        case,
        Decision(case.department, DecisionKind.request_supplement, missing_materials=("M02",)),
        case_id=case.case_id,
        now=at(date(2026, 11, 30)),
    )
    assert isinstance(asked, review.Outcome)
    resumed = review.supplemented(asked.state, now=at(date(2026, 12, 3)), calendar=CALENDAR)
    assert resumed is not None
    (changed,) = resumed.events
    assert changed.TYPE == "gov.case.deadline_changed.v1"
    # Tue 1, Wed 2, Thu 3 December did not count: three working days later.
    assert changed.deadline == resumed.state.deadline == date(2026, 12, 16)  # type: ignore[attr-defined]
    assert changed.paused_working_days == 3  # type: ignore[attr-defined]
    assert resumed.state.status is CaseStatus.accepted
    # A second round adds to the first.
    again = review.decide(
        resumed.state,
        Decision(case.department, DecisionKind.request_supplement, missing_materials=("M03",)),
        case_id=case.case_id,
        now=at(date(2026, 12, 7)),
    )
    assert isinstance(again, review.Outcome)
    second = review.supplemented(again.state, now=at(date(2026, 12, 8)), calendar=CALENDAR)
    assert second is not None and second.state.deadline == date(2026, 12, 17)
    assert len(second.state.pauses) == 2


def test_a_deadline_past_the_calendar_raises_an_alarm_and_a_new_calendar_sets_it() -> None:
    short = WorkCalendar.of(Calendar(covers_until=date(2026, 12, 5), holidays=[], workdays=[]))
    outcome = review.take(
        make_routed(time_limit_days=10), now=datetime(2026, 11, 27, 2, tzinfo=UTC), calendar=short
    )
    assert outcome.state.deadline is None
    types = [e.TYPE for e in outcome.events]
    assert types == ["gov.case.accepted.v1", "gov.case.deadline_unknown.v1"]
    alarm = outcome.events[1]
    assert alarm.covers_until == date(2026, 12, 5)  # type: ignore[attr-defined]
    known = review.deadline_now_known(outcome.state, CALENDAR)
    assert known is not None and known.state.deadline == date(2026, 12, 11)
    assert known.events[0].TYPE == "gov.case.deadline_changed.v1"
    assert review.deadline_now_known(known.state, CALENDAR) is None  # set once


def test_an_entrusted_case_is_accepted_as_of_its_signed_handover() -> None:
    routed = make_routed(time_limit_days=10)
    signed_at = datetime(2026, 11, 20, 3, tzinfo=UTC)
    handover = Handover(
        office_code="HC01-DC",
        signed_at=signed_at,
        digest="0" * 64,
        algorithm="ed25519",
        key_id="HC01-DC:abcd",
        signature="x",
    )
    routed = routed.model_copy(
        update={
            "route": routed.route.model_copy(update={"path": Path.entrusted}),
            "handover": handover,
        }
    )
    taken = review.take(routed, now=datetime(2026, 11, 27, 2, tzinfo=UTC), calendar=CALENDAR)
    assert taken.state.accepted_at == signed_at
    refused = review.take(
        routed,
        now=datetime(2026, 11, 27, 2, tzinfo=UTC),
        calendar=CALENDAR,
        handover_problem="digest does not match",
    )
    assert refused.state.status is CaseStatus.routed and refused.state.accepted_at is None
    assert [e.TYPE for e in refused.events] == ["gov.case.handover_refused.v1"]
    assert refused.state not in () and refused.state.handover_problem == "digest does not match"
