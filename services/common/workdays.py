"""Working-day arithmetic over the catalog calendar (DESIGN.md §3, "Deadlines").

A working day is Monday to Friday, minus the calendar's `holidays`, plus its make-up `workdays`
(调休). Beyond `covers_until` the calendar does not know the holidays, so any answer that
depends on a day past it is unknown (None): a deadline is never guessed.

All dates are local to the city (Asia/Shanghai); callers convert instants before asking.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

from contracts.catalog import Calendar

_DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class WorkCalendar:
    """A catalog calendar compiled for lookups (build once per catalog version)."""

    covers_until: date
    holidays: frozenset[date]
    workdays: frozenset[date]

    @classmethod
    def of(cls, calendar: Calendar | WorkCalendar) -> WorkCalendar:
        if isinstance(calendar, WorkCalendar):
            return calendar
        return cls(
            covers_until=calendar.covers_until,
            holidays=frozenset(calendar.holidays),
            workdays=frozenset(calendar.workdays),
        )


def is_working_day(calendar: Calendar | WorkCalendar, day: date) -> bool:
    """Mon-Fri minus holidays plus make-up workdays. A make-up workday wins over a holiday
    (a valid catalog never lists a day as both). Past `covers_until` only the weekday rule is
    known; `deadline` refuses to answer there."""
    cal = WorkCalendar.of(calendar)
    if day in cal.workdays:
        return True
    if day in cal.holidays:
        return False
    return day.weekday() < 5


def _paused(day: date, paused: tuple[tuple[date, date], ...]) -> bool:
    return any(start <= day <= end for start, end in paused)


def deadline(
    calendar: Calendar | WorkCalendar,
    accepted_on: date,
    time_limit_days: int,
    paused: Iterable[tuple[date, date]] = (),
) -> date | None:
    """The date of the `time_limit_days`-th working day after `accepted_on` (自受理之日起: the
    acceptance day itself does not count). Days inside a `paused` interval (inclusive at both
    ends: waiting for a supplement) do not count. 0 days: the acceptance date itself.
    None when the answer lies past the calendar's `covers_until` (unknown, never guessed)."""
    if time_limit_days < 0:
        raise ValueError("time_limit_days must not be negative")
    cal = WorkCalendar.of(calendar)
    pauses = tuple((start, end) for start, end in paused if start <= end)
    day = accepted_on
    remaining = time_limit_days
    while remaining > 0:
        day += _DAY
        if day > cal.covers_until:
            return None
        if is_working_day(cal, day) and not _paused(day, pauses):
            remaining -= 1
    return day if day <= cal.covers_until else None


def working_days_between(calendar: Calendar | WorkCalendar, start: date, end: date) -> int:
    """Working days d with start < d <= end (so `working_days_between(c, a, deadline(c, a, n))
    == n`). Negative when `end` is before `start`: -(working days in (end, start]), which reads
    as "that many working days overdue". Uses the weekday rule past `covers_until`."""
    if end < start:
        return -working_days_between(calendar, end, start)
    cal = WorkCalendar.of(calendar)
    # Whole weeks at once (5 weekdays each), the remainder day by day, then the exceptions.
    weeks = (end - start).days // 7
    count = weeks * 5
    day = start + timedelta(days=weeks * 7 + 1)
    while day <= end:
        count += day.weekday() < 5
        day += _DAY
    for holiday in cal.holidays:
        if start < holiday <= end and holiday.weekday() < 5 and holiday not in cal.workdays:
            count -= 1
    for workday in cal.workdays:
        if start < workday <= end and workday.weekday() >= 5:
            count += 1
    return count
