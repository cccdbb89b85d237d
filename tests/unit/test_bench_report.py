"""The bench report: issue 8's targets from measured figures, the table and the plot."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from services.bench.procs import cpu_deltas, per_unit
from services.bench.report import (
    Target,
    build_report,
    evaluate_targets,
    machine_busy_share,
    plot_report,
    print_report,
    raw_limit,
    stack_cpu_ms_per_unit,
    tracing_cost,
)

pytestmark = pytest.mark.unit


def latency(p50: float, p99: float) -> dict[str, Any]:
    return {"count": 10, "mean_ms": p50, "p50_ms": p50, "p95_ms": p99, "p99_ms": p99, "max_ms": p99}


def a_step(rate: float, closed_per_s: float, routed_p99: float) -> dict[str, Any]:
    return {
        "rate": rate,
        "offered": int(rate * 10),
        "submitted": int(rate * 10),
        "submit_rate": rate,
        "statuses": {"201": int(rate * 10)},
        "errors": {},
        "skipped_inflight_cap": 0,
        "closed": int(rate * 10),
        "closed_per_s": closed_per_s,
        "http": latency(5, 20),
        "submit_to_routed": latency(routed_p99 / 2, routed_p99),
        "submit_to_closed": latency(routed_p99, routed_p99 * 3),
        "cpu_s": {"intake-1": 2.0, "machine": 10.0, "others": 1.0},
        "wall_s": 12.5,
    }


def a_run(label: str, best: float, rss: float, generator_ms: float = 0.1) -> dict[str, Any]:
    return {
        "label": label,
        "load_generator_cpu_ms_per_request": generator_ms,
        "stopped": "saturated",
        "max_closed_per_s": best,
        "steps": [a_step(50, 50, 30), a_step(100, best, 80), a_step(200, best * 0.95, 900)],
        "processes": [
            {"name": "intake-1", "kind": "service", "pid": 1, "cpu_s": 9.0, "peak_rss_mb": rss},
            {"name": "postgresql", "kind": "infra", "pid": 2, "cpu_s": 5.0, "peak_rss_mb": 900},
        ],
    }


RAW = {
    "paced": {"rate": 100, "messages": 500, "completed": 500, "latency": latency(10, 40)},
    "burst": {
        "messages": 20000,
        "completed": 20000,
        "msgs_per_s": 4000.0,
        "latency": latency(1, 2),
    },
}


def test_targets_carry_measured_values_and_ratios() -> None:
    targets = {
        t.name: t
        for t in evaluate_targets(RAW, [a_run("r1", 90, 120, 0.7), a_run("r2", 120, 160, 0.2)])
    }
    closed = targets["closed cases/s"]
    assert (closed.measured, closed.where, closed.met) == (120, "r2", False)
    assert closed.ratio == pytest.approx(120 / 500)
    ratio = targets["(b)/(a) throughput"]
    assert ratio.measured == pytest.approx(0.03)
    assert ratio.met is False
    routed = targets["p99 submit->routed at 100/s (ms)"]
    assert (routed.measured, routed.where, routed.met) == (80, "r1", False)  # first run's rung
    rss = targets["peak RSS per service process (MB)"]
    assert (rss.measured, rss.where, rss.met) == (160, "r2 intake-1", False)  # infra ignored
    generator = targets["load generator CPU per request (ms)"]
    assert (generator.measured, generator.where, generator.met) == (0.7, "r1", False)  # worst


def test_targets_met_and_unmeasured() -> None:
    assert Target("x", "<=", 50, 40).met is True
    assert Target("x", ">=", 0.25, 0.3).met is True
    assert Target("x", ">=", 500, None).met is None
    assert Target("x", ">=", 500, None).ratio is None
    targets = evaluate_targets(None, [])
    assert all(t.measured is None for t in targets)


def test_raw_limit_prefers_the_steady_rate() -> None:
    assert raw_limit(RAW) == 4000.0
    assert raw_limit({"burst": {"msgs_per_s": None, "msgs_per_s_overall": 3000.0}}) == 3000.0
    assert raw_limit(None) is None


def test_cpu_deltas_and_machine_share() -> None:
    before = {"intake-1": 1.0, "postgresql": 2.0, "machine": 100.0}
    after = {"intake-1": 4.0, "postgresql": 3.0, "machine": 110.0}
    assert cpu_deltas(before, after) == {
        "intake-1": 3.0,
        "postgresql": 1.0,
        "machine": 10.0,
        "others": 6.0,
    }
    assert machine_busy_share({"cpu_s": {"machine": 10.0}, "wall_s": 10.0}, 2) == 0.5
    assert machine_busy_share({"cpu_s": {}, "wall_s": 10.0}, 2) is None


def test_report_prints_and_plots(tmp_path: Path) -> None:
    report = build_report(RAW, [a_run("replicas=1", 90, 120)], {"cpus": 2})
    out = io.StringIO()
    print_report(report, Console(file=out, width=250))
    text = out.getvalue()
    assert "replicas=1" in text
    assert "closed cases/s" in text
    assert "gen CPU ms/req" in text and "load generator CPU per request" in text
    plot = tmp_path / "bench.png"
    plot_report(report, plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cpu_per_case_counts_only_the_processes_under_test() -> None:
    cpu = {
        "intake-1": 1.0,
        "postgresql": 0.5,
        "bench-client": 9.0,
        "load-generator": 3.0,
        "machine": 20.0,
        "others": 5.0,
    }
    assert stack_cpu_ms_per_unit(cpu, 100) == pytest.approx(15.0)
    assert stack_cpu_ms_per_unit(cpu, 0) is None
    assert stack_cpu_ms_per_unit({}, 10) is None


def test_database_counters_per_unit() -> None:
    before = {"xact_commit": 100, "tup_inserted": 10}
    after = {"xact_commit": 400, "tup_inserted": 1010}
    assert per_unit(before, after, 100) == {"xact_commit": 3.0, "tup_inserted": 10.0}
    assert per_unit(before, after, 0) == {}


def test_tracing_cost_compares_cpu_per_case_at_the_same_rates() -> None:
    traced = a_run("replicas=1", 90, 120)
    step = a_step(50, 50, 20)
    step["cpu_s"] = {"intake-1": 1.6, "machine": 9.0, "others": 1.0}
    untraced: dict[str, Any] = {"label": "replicas=1 tracing off", "steps": [step]}
    (row,) = tracing_cost(traced, untraced)
    assert row["rate"] == 50
    assert row["cpu_ms_per_case_on"] == pytest.approx(1000 * 2.0 / 500)
    assert row["cpu_ms_per_case_off"] == pytest.approx(1000 * 1.6 / 500)
    assert row["cpu_cost_share"] == pytest.approx(0.25)
    assert (row["p99_routed_ms_on"], row["p99_routed_ms_off"]) == (30, 20)
    assert tracing_cost(traced, None) == []
    report = build_report(None, [traced], {}, untraced)
    assert report["tracing_cost"] == [row]
