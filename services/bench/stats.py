"""Pure figures of the bench: percentiles, completion rates, the rate ladder and its stop rule.

No I/O here, so every rule the bench applies is unit-tested (tests/unit/test_bench_*.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's
    default `linear` method); None for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return float(ordered[low])
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p95, p99 and max of latencies given in seconds, reported in ms."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    return {
        "count": len(seconds),
        "mean_ms": ms(sum(seconds) / len(seconds)) if seconds else None,
        "p50_ms": ms(percentile(seconds, 50)),
        "p95_ms": ms(percentile(seconds, 95)),
        "p99_ms": ms(percentile(seconds, 99)),
        "max_ms": ms(max(seconds)) if seconds else None,
    }


def completion_rate(times: Sequence[float], *, low: float = 0.1, high: float = 0.9) -> float | None:
    """Completions per second in the middle of a run: between the `low` and `high` quantiles
    of the completion times, which leaves out the ramp-up and the tail.

    When the system keeps up this is the offered rate; when it is saturated it is its capacity.
    None when there are too few completions (or they share one instant) to tell.
    """
    if not 0 <= low < high <= 1:
        raise ValueError("need 0 <= low < high <= 1")
    if len(times) < 10:
        return None
    ordered = sorted(times)
    first = round(low * (len(ordered) - 1))
    last = round(high * (len(ordered) - 1))
    span = ordered[last] - ordered[first]
    if last <= first or span <= 0:
        return None
    return (last - first) / span


def rate_ladder(start: float, maximum: float, factor: float = 2.0) -> list[float]:
    """Offered rates start, start*factor, ... up to and including maximum (never past it)."""
    if start <= 0 or factor <= 1 or maximum < start:
        raise ValueError("need 0 < start <= maximum and factor > 1")
    rates = []
    rate = start
    while rate <= maximum * (1 + 1e-9):
        rates.append(rate)
        rate *= factor
    return rates


@dataclass(frozen=True)
class StepOutcome:
    """What one rung of the ladder gave: the rule below only needs these figures."""

    offered: float  # cases/s the bench meant to submit
    submitted: int  # submissions the intake took (201)
    closed: int  # of those, closed before the drain deadline
    closed_per_s: float | None


def stop_reason(
    steps: Sequence[StepOutcome],
    *,
    min_gain: float = 0.10,
    min_closed_share: float = 0.98,
    measure_up_to: float = 0.0,
) -> str | None:
    """Why the ladder stops after the last step, or None to go on to the next rate.

    - `saturated`: closed cases/s rose by less than `min_gain` over the best earlier step
      (throughput stopped rising as the offered rate went up);
    - `backlog`: fewer than `min_closed_share` of the step's cases closed within the drain
      time, so a next step would start on a queue and measure it, not the rate;
    - `no_throughput`: nothing closed at all.

    Below `measure_up_to` only `no_throughput` stops the ladder: a rate some figure is reported
    at (p99 at 100 cases/s) is measured even past saturation.
    """
    if not steps:
        return None
    last = steps[-1]
    if not last.closed or last.closed_per_s is None:
        return "no_throughput"
    if last.offered < measure_up_to:
        return None
    if last.submitted and last.closed < min_closed_share * last.submitted:
        return "backlog"
    earlier = [s.closed_per_s for s in steps[:-1] if s.closed_per_s is not None]
    if earlier and last.closed_per_s < (1 + min_gain) * max(earlier):
        return "saturated"
    return None
