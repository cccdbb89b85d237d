"""好差评 statistics without a database: request parsing, the period, and the one SQL statement."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from sqlalchemy.dialects import postgresql

from contracts.events import Rating
from contracts.rest import RatingGrouping, RatingStatsRow
from services.common.refusals import Refused
from services.delivery.domain.stats import BAD, GOOD, RatedPeriod, parse_grouping, rated_period
from services.delivery.queries import stats_query

pytestmark = pytest.mark.unit


ALL_TIME = RatedPeriod(None, None)


def sql(grouping: RatingGrouping, period: RatedPeriod = ALL_TIME) -> str:
    compiled = stats_query(grouping, period).compile(
        dialect=postgresql.dialect(),  # type: ignore[no-untyped-call]
        compile_kwargs={"literal_binds": True},
    )
    return " ".join(str(compiled).split())


@pytest.mark.parametrize("by", ["department", "office", "level"])
def test_known_groupings_parse(by: str) -> None:
    assert parse_grouping(by) is RatingGrouping(by)


@pytest.mark.parametrize("by", ["item", "", "Department", "department "])
def test_an_unknown_grouping_is_refused(by: str) -> None:
    with pytest.raises(Refused) as caught:
        parse_grouping(by)
    refusal = caught.value.refusal
    assert refusal.status == 422
    assert refusal.code == "invalid_grouping"
    assert refusal.extra["allowed"] == ["department", "office", "level"]
    assert refusal.errors[0].field == "query.by"


def test_the_period_is_whole_city_days_both_ends_included() -> None:
    period = rated_period(date(2026, 11, 1), date(2026, 11, 30))
    # 00:00 in the city is 16:00 UTC the day before.
    assert period.since == datetime(2026, 10, 31, 16, 0, tzinfo=UTC)
    assert period.until == datetime(2026, 11, 30, 16, 0, tzinfo=UTC)


def test_one_day_period() -> None:
    period = rated_period(date(2026, 11, 29), date(2026, 11, 29))
    assert period.since is not None and period.until is not None
    assert (period.until - period.since).total_seconds() == 24 * 3600


def test_open_ends() -> None:
    assert rated_period(None, None) == ALL_TIME
    assert rated_period(date(2026, 11, 1), None).until is None
    assert rated_period(None, date(2026, 11, 1)).since is None


def test_a_period_ending_before_it_starts_is_refused() -> None:
    with pytest.raises(Refused) as caught:
        rated_period(date(2026, 11, 2), date(2026, 11, 1))
    assert (caught.value.refusal.status, caught.value.refusal.code) == (422, "invalid_period")


@pytest.mark.parametrize(
    ("grouping", "column"),
    [
        (RatingGrouping.department, "department"),
        (RatingGrouping.office, "intake_office"),
        (RatingGrouping.level, "level"),
    ],
)
def test_the_query_groups_and_sorts_by_the_key_in_sql(
    grouping: RatingGrouping, column: str
) -> None:
    text = sql(grouping)
    assert text.startswith(f"SELECT delivery.ratings.{column} AS key, count(*) AS total,")
    assert f"GROUP BY delivery.ratings.{column}" in text
    assert text.endswith(f"ORDER BY delivery.ratings.{column} ASC NULLS LAST")
    assert "WHERE delivery.ratings.rated_at" not in text  # no period, no bounds


def test_every_level_of_the_scale_is_counted_with_a_filter() -> None:
    text = sql(RatingGrouping.department)
    for grade in Rating:
        assert (
            f"count(*) FILTER (WHERE delivery.ratings.rating = '{grade.value}') AS {grade.value}"
            in text
        )
    assert (
        "count(*) FILTER (WHERE delivery.ratings.rating IN ('dissatisfied', 'very_dissatisfied'))"
        " AS bad" in text
    )
    assert (
        "round(CAST(count(*) FILTER (WHERE delivery.ratings.rating IN ('very_satisfied', "
        "'satisfied')) AS NUMERIC) / CAST(count(*) AS NUMERIC), 4)" in text
    )


def test_good_and_bad_split_the_scale_around_basic() -> None:
    assert set(GOOD) | set(BAD) | {Rating.basic} == set(Rating)
    assert not set(GOOD) & set(BAD)


def test_the_period_bounds_are_half_open() -> None:
    text = sql(RatingGrouping.level, rated_period(date(2026, 11, 1), date(2026, 11, 30)))
    assert "delivery.ratings.rated_at >= '2026-11-01 00:00:00+08:00'" in text
    assert "delivery.ratings.rated_at < '2026-12-01 00:00:00+08:00'" in text


def test_the_columns_are_the_rows_fields() -> None:
    names = [c.name for c in stats_query(RatingGrouping.office, ALL_TIME).selected_columns]
    assert names == list(RatingStatsRow.model_fields)


@pytest.mark.parametrize("day", [date(1, 1, 1), date(9999, 12, 31)])
def test_the_far_ends_of_the_calendar_are_refused_not_crashed_on(day: date) -> None:
    for first, last in ((day, None), (None, day)):
        with pytest.raises(Refused) as refused:
            rated_period(first, last)
        refusal = refused.value.refusal
        assert refusal.status == 422 and refusal.code == "invalid_period"
