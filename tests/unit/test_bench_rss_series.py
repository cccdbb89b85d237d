"""The bench's sustained load (issue 18: <= 150 MB per process after ten minutes): the RSS
summary, the target's figure, closed/s between samples, the report and its plot."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from services.bench.report import RSS_MB_TARGET, build_report, plot_soak, print_report
from services.bench.rss_series import closed_per_s, rss_summary, worst_at_end

pytestmark = pytest.mark.unit


def samples() -> list[dict[str, Any]]:
    """Intake climbs and levels off, routing keeps rising, Kafka joins a sample late."""
    rss = [
        (0, {"intake-1": 100.0, "routing-1": 90.0}, 0),
        (60, {"intake-1": 140.0, "routing-1": 100.0, "kafka-1": 700.0}, 3000),
        (120, {"intake-1": 152.0, "routing-1": 120.0, "kafka-1": 720.0}, 6000),
        (180, {"intake-1": 149.5, "routing-1": 135.0, "kafka-1": 710.0}, 9000),
        (240, {"intake-1": 151.0, "routing-1": 160.0, "kafka-1": 705.0}, 12000),
    ]
    return [{"t": t, "rss_mb": mb, "closed": closed} for t, mb, closed in rss]


def test_the_summary_gives_start_peak_end_and_growth_per_process() -> None:
    got = rss_summary(samples())
    assert got["intake-1"] == {
        "start_mb": 100.0,
        "peak_mb": 152.0,
        "end_mb": 151.0,
        "growth_mb": 51.0,
        "second_half_growth_mb": -1.0,  # from t=120 (half of 240): levelled off
    }
    assert got["routing-1"]["second_half_growth_mb"] == 40.0  # still rising
    assert got["kafka-1"]["start_mb"] == 700.0  # from its own first sample
    assert rss_summary([]) == {}


def test_the_targets_figure_is_the_largest_service_at_the_end_not_kafka() -> None:
    summary = rss_summary(samples())
    assert worst_at_end(summary, ["intake-1", "routing-1"]) == {
        "name": "routing-1",
        "end_mb": 160.0,
    }
    assert worst_at_end(summary, ["approval-1"]) == {}


def test_closed_per_s_runs_between_the_samples_around_the_window() -> None:
    series = samples()
    assert closed_per_s(series, 60, 240) == 50.0
    assert closed_per_s(series, 170, 240) == 50.0  # from the sample at 120
    assert closed_per_s(series, -1, 240) is None  # nothing before
    assert closed_per_s(series, 240, 240) is None  # one sample: no rate


def soak_result() -> dict[str, Any]:
    series = samples()
    summary = rss_summary(series)
    services = ["intake-1", "routing-1"]
    return {
        "rate": 50.0,
        "minutes": 4.0,
        "sample_seconds": 60.0,
        "services": services,
        "submitted": 12000,
        "closed": 12000,
        "closed_per_s": 50.0,
        "submit_to_closed": {"p99_ms": 250.0},
        "cpu_ms_per_closed_case": {"intake-1": 3.0, "routing-1": 2.0, "stack": 9.0},
        "rss": summary,
        "worst_service_end": worst_at_end(summary, services),
        "samples": series,
    }


def test_the_report_carries_the_rss_target_and_prints_every_process(tmp_path: Path) -> None:
    soak = {**soak_result(), "measured": {"when": "2026-12-08T02:00:00+00:00", "commit": "abc1234"}}
    report = build_report(None, [], {"commit": "abc1234"}, soak=soak)
    target = next(t for t in report["targets"] if t["name"].startswith("RSS per service"))
    assert target["target"] == RSS_MB_TARGET == 150.0
    assert target["measured"] == 160.0 and target["met"] is False
    assert target["where"] == "routing-1 after 4 min at 50/s"
    # The soak is a run of its own: a result of another commit, or of none, is said to be so.
    for meta, older in (({"commit": "def5678"}, soak), ({"commit": "abc1234"}, soak_result())):
        stale = build_report(None, [], meta, soak=older)
        target = next(t for t in stale["targets"] if t["name"].startswith("RSS per service"))
        assert target["where"].startswith("routing-1 after 4 min at 50/s; an earlier run (")
        assert ("abc1234, 2026-12-08" in target["where"]) is ("measured" in older)
    unmeasured = build_report(None, [], {})
    target = next(t for t in unmeasured["targets"] if t["name"].startswith("RSS per service"))
    assert target["measured"] is None and target["met"] is None

    out = io.StringIO()
    print_report(report, Console(file=out, width=220))
    printed = out.getvalue()
    assert "sustained load" in printed and "(kafka-1)" in printed and "160.0" in printed

    plot = tmp_path / "soak.png"
    plot_soak(soak, plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
