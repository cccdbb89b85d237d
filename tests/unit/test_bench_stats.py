"""The bench's pure figures: percentiles, completion rates, the rate ladder and its stop rule."""

from __future__ import annotations

import pytest

from services.bench.stats import (
    StepOutcome,
    completion_rate,
    latency_summary,
    percentile,
    rate_ladder,
    stop_reason,
)

pytestmark = pytest.mark.unit


def test_percentile_interpolates_between_ranks_like_numpy_linear() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([5.0], 99) == 5.0


def test_percentile_does_not_need_sorted_input_and_has_none_for_nothing() -> None:
    assert percentile([9.0, 1.0, 5.0], 50) == 5.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_latency_summary_reports_milliseconds() -> None:
    summary = latency_summary([0.010, 0.020, 0.030, 0.040, 0.100])
    assert summary["count"] == 5
    assert summary["p50_ms"] == 30.0
    assert summary["max_ms"] == 100.0
    assert summary["mean_ms"] == 40.0
    assert latency_summary([]) == {
        "count": 0,
        "mean_ms": None,
        "p50_ms": None,
        "p95_ms": None,
        "p99_ms": None,
        "max_ms": None,
    }


def test_completion_rate_is_the_pace_of_the_middle_of_the_run() -> None:
    steady = [i / 100 for i in range(1000)]  # 100 per second for 10 s
    assert completion_rate(steady) == pytest.approx(100.0)
    # A slow start and a long tail do not change the middle.
    skewed = [-30.0, *steady[1:-1], 60.0]
    assert completion_rate(skewed) == pytest.approx(100.0, rel=0.01)


def test_completion_rate_needs_enough_distinct_times() -> None:
    assert completion_rate([1.0, 2.0, 3.0]) is None
    assert completion_rate([5.0] * 50) is None
    with pytest.raises(ValueError):
        completion_rate([1.0] * 20, low=0.9, high=0.1)


def test_rate_ladder_doubles_up_to_the_maximum() -> None:
    assert rate_ladder(25, 400) == [25, 50, 100, 200, 400]
    assert rate_ladder(25, 399) == [25, 50, 100, 200]
    assert rate_ladder(10, 10) == [10]
    assert rate_ladder(10, 100, factor=3) == [10, 30, 90]
    with pytest.raises(ValueError):
        rate_ladder(0, 10)
    with pytest.raises(ValueError):
        rate_ladder(10, 100, factor=1)


def step(offered: float, closed_per_s: float | None, submitted: int = 100, closed: int = 100):
    return StepOutcome(offered, submitted, closed, closed_per_s)


def test_ladder_goes_on_while_throughput_rises() -> None:
    assert stop_reason([]) is None
    assert stop_reason([step(25, 25.0)]) is None
    assert stop_reason([step(25, 25.0), step(50, 49.0), step(100, 98.0)]) is None


def test_ladder_stops_when_throughput_stops_rising() -> None:
    assert stop_reason([step(25, 25.0), step(50, 45.0), step(100, 46.0)]) == "saturated"
    # Measured against the best earlier step, not just the previous one.
    assert stop_reason([step(25, 25.0), step(50, 48.0), step(100, 40.0), step(200, 50.0)]) == (
        "saturated"
    )
    # The gain needed is a knob.
    history = [step(25, 25.0), step(50, 45.0), step(100, 48.0)]
    assert stop_reason(history, min_gain=0.05) is None
    assert stop_reason(history, min_gain=0.10) == "saturated"


def test_ladder_stops_on_a_backlog_or_nothing_closed() -> None:
    assert stop_reason([step(25, 25.0), step(50, 48.0, submitted=500, closed=400)]) == "backlog"
    assert stop_reason([step(25, 25.0, submitted=250, closed=248)]) is None  # within 98%
    assert stop_reason([step(25, None, closed=0)]) == "no_throughput"
    assert stop_reason([step(25, None, closed=5)]) == "no_throughput"


def test_ladder_reaches_the_rate_a_target_is_measured_at() -> None:
    saturated = [step(25, 25.0), step(50, 26.0)]
    assert stop_reason(saturated) == "saturated"
    assert stop_reason(saturated, measure_up_to=100) is None
    assert stop_reason([*saturated, step(100, 26.0)], measure_up_to=100) == "saturated"
    assert stop_reason([step(25, None, closed=0)], measure_up_to=100) == "no_throughput"
