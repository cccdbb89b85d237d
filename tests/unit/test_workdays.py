from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.catalog import Calendar
from services.common.workdays import WorkCalendar, deadline, is_working_day, working_days_between

pytestmark = pytest.mark.unit

# October 2026: 1, 2 (Thu, Fri) and 5-7 (Mon-Wed) off; Saturday the 10th is a make-up workday.
CAL = Calendar(
    covers_until=date(2026, 12, 31),
    holidays=[date(2026, 10, d) for d in (1, 2, 3, 4, 5, 6, 7)],
    workdays=[date(2026, 10, 10)],
)


def d(month: int, day: int, year: int = 2026) -> date:
    return date(year, month, day)


@pytest.mark.parametrize(
    ("day", "working"),
    [
        (d(9, 30), True),  # Wednesday
        (d(10, 1), False),  # holiday on a Thursday
        (d(10, 3), False),  # Saturday
        (d(10, 8), True),
        (d(10, 10), True),  # make-up Saturday
        (d(10, 11), False),  # Sunday
    ],
)
def test_is_working_day(day: date, working: bool) -> None:
    assert is_working_day(CAL, day) is working
    assert is_working_day(WorkCalendar.of(CAL), day) is working


def test_acceptance_day_does_not_count() -> None:
    assert deadline(CAL, d(9, 28), 1) == d(9, 29)  # Monday -> Tuesday
    assert deadline(CAL, d(9, 25), 1) == d(9, 28)  # Friday -> Monday


def test_zero_days_is_the_acceptance_date() -> None:
    assert deadline(CAL, d(10, 3), 0) == d(10, 3)


def test_holidays_and_make_up_days() -> None:
    # Wed 30 Sep + 3: Thu 1 .. Wed 7 off, Thu 8, Fri 9, Sat 10 (make-up).
    assert deadline(CAL, d(9, 30), 3) == d(10, 10)
    assert deadline(CAL, d(9, 30), 4) == d(10, 12)
    # Accepted on a holiday: the count starts the next working day.
    assert deadline(CAL, d(10, 1), 1) == d(10, 8)


def test_paused_days_do_not_count() -> None:
    # Mon 12 Oct + 5 = Mon 19 Oct; paused Wed 14 - Thu 15 (inclusive): two more days.
    assert deadline(CAL, d(10, 12), 5) == d(10, 19)
    assert deadline(CAL, d(10, 12), 5, paused=[(d(10, 14), d(10, 15))]) == d(10, 21)
    # A pause over a weekend costs nothing; a reversed interval is ignored.
    assert deadline(CAL, d(10, 12), 5, paused=[(d(10, 17), d(10, 18))]) == d(10, 19)
    assert deadline(CAL, d(10, 12), 5, paused=[(d(10, 15), d(10, 14))]) == d(10, 19)


def test_past_the_calendar_is_unknown() -> None:
    assert deadline(CAL, d(12, 30), 1) == d(12, 31)
    assert deadline(CAL, d(12, 30), 2) is None
    assert deadline(CAL, date(2027, 1, 4), 0) is None
    assert deadline(CAL, d(12, 1), 1, paused=[(d(12, 2), date(9999, 12, 31))]) is None


def test_negative_limit_is_a_bug() -> None:
    with pytest.raises(ValueError):
        deadline(CAL, d(10, 12), -1)


def test_working_days_between() -> None:
    assert working_days_between(CAL, d(9, 30), d(10, 10)) == 3
    assert working_days_between(CAL, d(10, 10), d(9, 30)) == -3
    assert working_days_between(CAL, d(10, 12), d(10, 12)) == 0
    assert working_days_between(CAL, d(10, 12), d(10, 13)) == 1


# --------------------------------------------------------------------------- properties

START = date(2026, 1, 1)
WINDOW = 400
days = st.integers(min_value=0, max_value=WINDOW).map(lambda n: START + timedelta(days=n))


@st.composite
def calendars(draw: st.DrawFn) -> Calendar:
    holidays = draw(st.sets(days, max_size=60))
    workdays = draw(st.sets(days, max_size=15)) - holidays
    covers = START + timedelta(days=draw(st.integers(min_value=0, max_value=WINDOW)))
    return Calendar(covers_until=covers, holidays=sorted(holidays), workdays=sorted(workdays))


def naive_working(cal: Calendar, day: date) -> bool:
    if day in cal.workdays:
        return True
    return day.weekday() < 5 and day not in cal.holidays


def naive_deadline(
    cal: Calendar, accepted: date, n: int, paused: list[tuple[date, date]]
) -> date | None:
    day, counted = accepted, 0
    while counted < n:
        day += timedelta(days=1)
        if naive_working(cal, day) and not any(a <= day <= b for a, b in paused):
            counted += 1
    return day if day <= cal.covers_until else None


intervals = st.lists(st.tuples(days, days).map(lambda t: (min(t), max(t))), max_size=3)


@settings(max_examples=300, deadline=None)
@given(calendars(), days, st.integers(min_value=0, max_value=60), intervals)
def test_deadline_matches_day_by_day_reference(
    cal: Calendar, accepted: date, n: int, paused: list[tuple[date, date]]
) -> None:
    assert deadline(cal, accepted, n, paused) == naive_deadline(cal, accepted, n, paused)


@settings(max_examples=300, deadline=None)
@given(calendars(), days, days)
def test_working_days_between_matches_reference(cal: Calendar, start: date, end: date) -> None:
    lo, hi = min(start, end), max(start, end)
    count = sum(naive_working(cal, lo + timedelta(days=k)) for k in range(1, (hi - lo).days + 1))
    assert working_days_between(cal, start, end) == (count if end >= start else -count)


@settings(max_examples=200, deadline=None)
@given(calendars(), days, st.integers(min_value=0, max_value=60))
def test_deadline_is_n_working_days_later(cal: Calendar, accepted: date, n: int) -> None:
    due = deadline(cal, accepted, n)
    if due is not None:
        assert working_days_between(cal, accepted, due) == n
        assert due == accepted or is_working_day(cal, due)
