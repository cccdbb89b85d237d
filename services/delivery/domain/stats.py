"""好差评 statistics: the terms of a request for them, and which ratings are good and bad.

Pure (no I/O): `parse_grouping` and `rated_period` turn the request into values or raise a
`Refused` (422) the HTTP edge answers as problem JSON; `queries.stats_query` builds the one SQL
statement that does all the counting. Periods are city-local dates (Asia/Shanghai), both ends
included.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from contracts.events import Rating
from contracts.rest import RatingGrouping
from services.common.city import CITY_TZ
from services.common.refusals import FieldError, refused

GOOD = (Rating.very_satisfied, Rating.satisfied)
BAD = (Rating.dissatisfied, Rating.very_dissatisfied)


def parse_grouping(by: str) -> RatingGrouping:
    try:
        return RatingGrouping(by)
    except ValueError:
        allowed = ", ".join(g.value for g in RatingGrouping)
        raise refused(
            422,
            "invalid_grouping",
            "Ratings cannot be grouped that way",
            f"by={by!r} is not a grouping; use one of: {allowed}.",
            errors=(FieldError("query.by", f"must be one of: {allowed}"),),
            allowed=[g.value for g in RatingGrouping],
        ) from None


@dataclass(frozen=True)
class RatedPeriod:
    """`since <= rated_at < until`; either end open when None."""

    since: datetime | None
    until: datetime | None


def _city_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=CITY_TZ)


# Ratings exist from tongban's start on; outside this window a bound is a typo, and the far
# ends of the calendar (0001-01-01, 9999-12-31) would overflow as instants.
EARLIEST_DAY, LATEST_DAY = date(1970, 1, 1), date(2999, 12, 31)


def rated_period(first: date | None, last: date | None) -> RatedPeriod:
    """The instants of the city-local days `first` .. `last` (both included)."""
    for name, day in (("from", first), ("to", last)):
        if day is not None and not EARLIEST_DAY <= day <= LATEST_DAY:
            raise refused(
                422,
                "invalid_period",
                "The period is outside the dates tongban keeps",
                f"{name}={day.isoformat()} is not between {EARLIEST_DAY} and {LATEST_DAY}.",
                errors=(FieldError(f"query.{name}", "out of range"),),
            )
    if first is not None and last is not None and first > last:
        raise refused(
            422,
            "invalid_period",
            "The period ends before it starts",
            f"from={first.isoformat()} is after to={last.isoformat()}.",
            errors=(FieldError("query.to", "must not be before `from`"),),
        )
    return RatedPeriod(
        since=_city_midnight(first) if first is not None else None,
        until=_city_midnight(last + timedelta(days=1)) if last is not None else None,
    )
