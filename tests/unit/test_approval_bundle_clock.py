"""The bundle's clock (DESIGN.md §8, services/approval/domain/clock.py): from the first member
acceptance, the bundle's limit in working days of the catalog calendar, stopped when every
member is decided; and every event approval emits about a member names its bundle."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, time

import pytest

from contracts.catalog import Calendar
from contracts.common import CaseStatus
from contracts.events import DecisionKind
from services.approval.domain import clock, review
from services.approval.domain.clock import MemberClock
from services.approval.domain.review import Decision
from services.common.city import CITY_TZ
from services.common.workdays import WorkCalendar
from tests.unit.test_approval_review import APPROVE, accepted_case

pytestmark = pytest.mark.unit

# National Day week: 10-01..10-07 off, 09-28 (Sunday) and 10-10 (Saturday) made up.
GOLDEN_WEEK = WorkCalendar.of(
    Calendar(
        covers_until=date(2026, 12, 31),
        holidays=[date(2026, 10, d) for d in range(1, 8)],
        workdays=[date(2026, 9, 28), date(2026, 10, 10)],
    )
)


def at(day: date, hour: int = 10) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=CITY_TZ)


def member(case_id: str, status: CaseStatus | None, accepted: date | None = None) -> MemberClock:
    return MemberClock(case_id, status, at(accepted) if accepted else None)


def test_the_deadline_counts_from_the_first_acceptance_over_the_holidays() -> None:
    members = [
        member("A", CaseStatus.accepted, date(2026, 9, 30)),  # Wednesday, before the holidays
        member("B", CaseStatus.accepted, date(2026, 10, 9)),
        member("C", None),  # waiting for a prerequisite: not routed here yet
    ]
    state = clock.bundle_clock(GOLDEN_WEEK, members, time_limit_days=5, warning_points=[0.5])
    assert state.running and not state.stopped
    assert state.first_accepted_at == at(date(2026, 9, 30))
    # 10-01..10-07 off; 10-08 Thu, 10-09 Fri, 10-10 Sat (made up), 10-12 Mon, 10-13 Tue.
    assert state.deadline == date(2026, 10, 13)
    assert [p.day for p in state.points] == [date(2026, 10, 10), date(2026, 10, 13)]
    assert [p.point for p in state.points] == [0.5, 1.0]


def test_the_clock_does_not_start_before_a_member_is_accepted() -> None:
    members = [member("A", CaseStatus.route_failed), member("B", None)]
    state = clock.bundle_clock(GOLDEN_WEEK, members, time_limit_days=5, warning_points=[0.5])
    assert not state.running and not state.stopped and state.deadline is None


@pytest.mark.parametrize(
    "last",
    [CaseStatus.approved, CaseStatus.denied, CaseStatus.withdrawn, CaseStatus.terminated],
)
def test_the_clock_stops_when_every_member_is_decided_or_ended(last: CaseStatus) -> None:
    members = [member("A", CaseStatus.approved, date(2026, 11, 2)), member("B", last)]
    state = clock.bundle_clock(GOLDEN_WEEK, members, time_limit_days=5, warning_points=[0.5])
    assert state.stopped and not state.running
    assert clock.open_members(members) == []


def test_a_held_approval_keeps_the_bundle_open() -> None:
    """容缺受理: the member waits for its materials, so the bundle is not done."""
    members = [member("A", CaseStatus.approval_held, date(2026, 11, 2)), member("B", None)]
    assert clock.open_members(members) == ["A", "B"]


def test_a_withdrawn_bundle_stops_its_clock() -> None:
    members = [member("A", CaseStatus.accepted, date(2026, 11, 2))]
    state = clock.bundle_clock(
        GOLDEN_WEEK, members, time_limit_days=5, warning_points=[0.5], withdrawn=True
    )
    assert state.stopped


def test_a_deadline_past_the_calendar_is_unknown_never_guessed() -> None:
    short = WorkCalendar.of(Calendar(covers_until=date(2026, 11, 3), holidays=[], workdays=[]))
    members = [member("A", CaseStatus.accepted, date(2026, 11, 2))]
    state = clock.bundle_clock(short, members, time_limit_days=5, warning_points=[0.5])
    assert state.running and state.deadline is None
    assert state.points[-1].due_at is None


def test_every_event_about_a_member_names_its_bundle() -> None:
    case = replace(accepted_case(), bundle_id="BD-1")
    supplement = Decision(
        case.department, DecisionKind.request_supplement, missing_materials=("M01",)
    )
    outcomes = [
        review.decide(case, APPROVE, case_id=case.case_id, now=at(date(2026, 11, 3))),
        review.decide(case, supplement, case_id=case.case_id, now=at(date(2026, 11, 3))),
        review.lapse(replace(case, deferred=("M02",)), now=at(date(2026, 11, 9))),
        review.decide(
            replace(case, deferred=("M02",)),
            APPROVE,
            case_id=case.case_id,
            now=at(date(2026, 11, 3)),
        ),
    ]
    events = [e for o in outcomes if isinstance(o, review.Outcome) for e in o.events]
    assert len(events) == 4
    assert {e.bundle_id for e in events} == {"BD-1"}
