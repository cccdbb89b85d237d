"""The legal clock of a case (pure): deadline with supplement pauses, and the moments its SLA
warnings and its overdue fall due; and the clock of a bundle (一件事, DESIGN.md §8), from its
first member acceptance until every member is decided.

Days are city-local working days (DESIGN.md §3). The acceptance day does not count
(自受理之日起). A supplement round pauses the clock: the day the request goes out still counts
(the department worked on the case), the days after it up to and including the day the
materials arrive do not (补正期间不计入审查时限); counting resumes the day after, as it starts
the day after acceptance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from contracts.common import CaseStatus
from services.common.city import CITY_TZ
from services.common.workdays import WorkCalendar, deadline, is_working_day

OVERDUE_POINT = 1.0


def local_date(instant: datetime) -> date:
    return instant.astimezone(CITY_TZ).date()


def end_of_day(day: date) -> datetime:
    """The instant a local day is over: midnight at its end, city time."""
    return datetime.combine(day + timedelta(days=1), time.min, tzinfo=CITY_TZ)


def paused_intervals(
    pauses: Iterable[tuple[datetime, datetime | None]],
) -> tuple[tuple[date, date], ...]:
    """The days that do not count, from the finished supplement rounds (requested, answered)."""
    intervals = []
    for requested_at, supplemented_at in pauses:
        if supplemented_at is None:
            continue  # still waiting: the pause has no end yet
        start = local_date(requested_at) + timedelta(days=1)
        end = local_date(supplemented_at)
        if start <= end:
            intervals.append((start, end))
    return tuple(intervals)


def paused_working_days(calendar: WorkCalendar, intervals: Sequence[tuple[date, date]]) -> int:
    days = 0
    for start, end in intervals:
        day = start
        while day <= end:
            days += is_working_day(calendar, day)
            day += timedelta(days=1)
    return days


def case_deadline(
    calendar: WorkCalendar | None,
    accepted_on: date,
    time_limit_days: int,
    intervals: Sequence[tuple[date, date]] = (),
) -> date | None:
    """None when unknown: past the calendar's covers_until, or no calendar at all."""
    if calendar is None:
        return None
    return deadline(calendar, accepted_on, time_limit_days, paused=intervals)


def deferral_due(calendar: WorkCalendar | None, accepted_on: date, defer_days: int) -> date | None:
    """The last day to bring the materials deferred at submission (容缺受理): the
    `defer_days`-th working day after the acceptance date. Fixed at acceptance: the applicant's
    promise runs on its own, so a supplement round of the review does not move it. None when
    unknown (past the calendar's covers_until, or no calendar)."""
    return case_deadline(calendar, accepted_on, defer_days)


def verification_due(
    calendar: WorkCalendar | None, approved_on: date, verify_days: int
) -> date | None:
    """The last day to verify the commitments an approval rested on (告知承诺): the
    `verify_days`-th working day after the local date the approval took effect. None when
    unknown (past the calendar's covers_until, or no calendar)."""
    return case_deadline(calendar, approved_on, verify_days)


@dataclass(frozen=True)
class ClockPoint:
    """One moment of a case's clock: `point` is the share of the limit (1.0 = overdue)."""

    point: float
    due_at: datetime | None  # None: unknown (past the calendar)
    day: date | None  # the working day whose end it is


def clock_points(
    calendar: WorkCalendar | None,
    accepted_on: date,
    time_limit_days: int,
    warning_points: Sequence[float],
    intervals: Sequence[tuple[date, date]] = (),
) -> list[ClockPoint]:
    """When each warning (a share of the limit, e.g. 0.5, 0.8) and the overdue fall due.

    A warning at share r falls at the end of the ceil(r x limit)-th working day; overdue at
    the end of the deadline day. An instant item (limit 0) has no clock.
    """
    if time_limit_days <= 0:
        return []
    points = sorted({p for p in warning_points if 0 < p < 1}) + [OVERDUE_POINT]
    out = []
    for point in points:
        days = max(1, math.ceil(point * time_limit_days))
        day = case_deadline(calendar, accepted_on, days, intervals)
        out.append(ClockPoint(point, end_of_day(day) if day else None, day))
    return out


# -- the bundle's clock (一件事, DESIGN.md §8) --------------------------------------------------

# A member no longer holds its bundle's clock once decided or ended. A held approval (容缺受理)
# is not among them: the bundle is not done while the member waits for its materials.
MEMBER_DECIDED = frozenset(
    {
        CaseStatus.approved,
        CaseStatus.denied,
        CaseStatus.terminated,
        CaseStatus.withdrawn,
        CaseStatus.revoked,
    }
)


@dataclass(frozen=True)
class MemberClock:
    """A member as approval knows it: its status here (None: not routed here yet, e.g.
    waiting for a prerequisite) and when it was accepted."""

    case_id: str
    status: CaseStatus | None = None
    accepted_at: datetime | None = None


def open_members(members: Sequence[MemberClock]) -> list[str]:
    """The members not decided yet, in the bundle's order."""
    return [m.case_id for m in members if m.status not in MEMBER_DECIDED]


def first_acceptance(members: Sequence[MemberClock]) -> datetime | None:
    """The bundle's clock starts with its first member acceptance (None: none yet)."""
    return min((m.accepted_at for m in members if m.accepted_at is not None), default=None)


@dataclass(frozen=True)
class BundleClock:
    """What the bundle's clock is now: running (its deadline and points), not started (no
    member accepted yet) or stopped (every member decided or ended, or the bundle withdrawn)."""

    running: bool
    stopped: bool
    first_accepted_at: datetime | None = None
    deadline: date | None = None
    points: tuple[ClockPoint, ...] = ()


def bundle_clock(
    calendar: WorkCalendar | None,
    members: Sequence[MemberClock],
    *,
    time_limit_days: int,
    warning_points: Sequence[float],
    withdrawn: bool = False,
) -> BundleClock:
    """The bundle's deadline is the `time_limit_days`-th working day after its first member
    acceptance (the acceptance day does not count, as for a case; never guessed past the
    calendar); its warnings and overdue fall at the same shares as a case's. The clock stops
    when every member is decided or ended, or the bundle is withdrawn."""
    first = first_acceptance(members)
    if withdrawn or not open_members(members):
        return BundleClock(running=False, stopped=True, first_accepted_at=first)
    if first is None:
        return BundleClock(running=False, stopped=False)
    accepted_on = local_date(first)
    return BundleClock(
        running=True,
        stopped=False,
        first_accepted_at=first,
        deadline=case_deadline(calendar, accepted_on, time_limit_days),
        points=tuple(clock_points(calendar, accepted_on, time_limit_days, warning_points)),
    )
