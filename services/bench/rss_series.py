"""Resident memory over a sustained load (issue 18: <= 150 MB per process after ten minutes),
pure: the summary of a series of RSS samples per process, and the soak's progress figures.

No I/O, so the figures are unit-tested (tests/unit/test_bench_rss_series.py); the sampling is
in services/bench/soak.py, the table and plot in services/bench/report.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def rss_summary(samples: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per process seen in the samples (each `{"t": s since the start, "rss_mb": {process:
    MB}}`, in time order): RSS at its first sample, peak, at its last sample, the growth from
    first to last, and the growth over the second half of the run (from the first sample at or
    after half the last sample's time): near 0 when the process levelled off, the rise still
    going on when it did not."""
    if not samples:
        return {}
    half = float(samples[-1]["t"]) / 2
    series: dict[str, list[tuple[float, float]]] = {}
    for sample in samples:
        for name, mb in sample["rss_mb"].items():
            series.setdefault(name, []).append((float(sample["t"]), float(mb)))
    out = {}
    for name, points in sorted(series.items()):
        values = [mb for _, mb in points]
        second_half = [mb for t, mb in points if t >= half] or values[-1:]
        out[name] = {
            "start_mb": values[0],
            "peak_mb": max(values),
            "end_mb": values[-1],
            "growth_mb": round(values[-1] - values[0], 1),
            "second_half_growth_mb": round(values[-1] - second_half[0], 1),
        }
    return out


def worst_at_end(
    summary: Mapping[str, Mapping[str, float]], names: Iterable[str]
) -> dict[str, Any]:
    """The process among `names` with the largest RSS at the end (the target's figure), or {}
    when none of them was sampled."""
    measured = [(summary[n]["end_mb"], n) for n in names if n in summary]
    if not measured:
        return {}
    end_mb, name = max(measured)
    return {"name": name, "end_mb": end_mb}


def closed_per_s(samples: Sequence[Mapping[str, Any]], since: float, until: float) -> float | None:
    """Cases closed per second between the last sample at or before `since` and the last at
    or before `until` (each sample's `closed`: the running count); None without two samples."""
    before = [s for s in samples if s["t"] <= since]
    after = [s for s in samples if s["t"] <= until]
    if not before or not after or after[-1]["t"] <= before[-1]["t"]:
        return None
    closed = float(after[-1]["closed"] - before[-1]["closed"])
    return round(closed / float(after[-1]["t"] - before[-1]["t"]), 1)
