"""好差评 statistics: the query that counts ratings per department, office or level.

Pure (no I/O): `parse_grouping` and `rated_period` turn the request into values,
`stats_query` builds one SQL statement that does all the counting (GROUP BY with FILTER), and
the handler only runs it. Periods are city-local dates (Asia/Shanghai), both ends included.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Float, Numeric, Select, cast, func, select
from sqlalchemy.sql.elements import ColumnElement

from contracts.events import Rating
from contracts.rest import RatingGrouping
from services.common.city import CITY_TZ
from services.common.web import Problem
from services.delivery import models

GOOD = (Rating.very_satisfied, Rating.satisfied)
BAD = (Rating.dissatisfied, Rating.very_dissatisfied)


def parse_grouping(by: str) -> RatingGrouping:
    try:
        return RatingGrouping(by)
    except ValueError:
        allowed = ", ".join(g.value for g in RatingGrouping)
        raise Problem(
            422,
            "invalid_grouping",
            "Ratings cannot be grouped that way",
            f"by={by!r} is not a grouping; use one of: {allowed}.",
            errors=[{"field": "query.by", "message": f"must be one of: {allowed}"}],
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
            raise Problem(
                422,
                "invalid_period",
                "The period is outside the dates tongban keeps",
                f"{name}={day.isoformat()} is not between {EARLIEST_DAY} and {LATEST_DAY}.",
                errors=[{"field": f"query.{name}", "message": "out of range"}],
            )
    if first is not None and last is not None and first > last:
        raise Problem(
            422,
            "invalid_period",
            "The period ends before it starts",
            f"from={first.isoformat()} is after to={last.isoformat()}.",
            errors=[{"field": "query.to", "message": "must not be before `from`"}],
        )
    return RatedPeriod(
        since=_city_midnight(first) if first is not None else None,
        until=_city_midnight(last + timedelta(days=1)) if last is not None else None,
    )


def _key(grouping: RatingGrouping) -> ColumnElement[str | None]:
    r = models.ratings.c
    return {
        RatingGrouping.department: r.department,
        RatingGrouping.office: r.intake_office,
        RatingGrouping.level: r.level,
    }[grouping]


def stats_query(grouping: RatingGrouping, period: RatedPeriod) -> Select[*tuple[Any, ...]]:
    """One row per key, sorted by key (a null key last), columns named as `RatingStatsRow`."""
    r = models.ratings.c
    key = _key(grouping)
    total = func.count()
    good = func.count().filter(r.rating.in_([g.value for g in GOOD]))
    query = (
        select(
            key.label("key"),
            total.label("total"),
            *(func.count().filter(r.rating == grade.value).label(grade.value) for grade in Rating),
            # total >= 1 in every group, so the division is safe.
            cast(func.round(cast(good, Numeric) / total, 4), Float).label("satisfaction_rate"),
            func.count().filter(r.rating.in_([b.value for b in BAD])).label("bad"),
        )
        .group_by(key)
        .order_by(key.asc().nulls_last())
    )
    if period.since is not None:
        query = query.where(r.rated_at >= period.since)
    if period.until is not None:
        query = query.where(r.rated_at < period.until)
    return query
