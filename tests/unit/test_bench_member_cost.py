"""The bench's cost per member (issue 18): the bundle it measures, the member counting, the
ratio and its target in the report."""

from __future__ import annotations

import io
import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from contracts.events import BundleSubmitted
from services.bench.member_cost import (
    BENCH_BUNDLE_CODE,
    MEMBER_COST_RATIO_TARGET,
    bench_bundle,
    bundle_done,
    bundles_closing_alone,
    closed_members,
    closes_alone,
    cost_ratios,
    net_of_idle,
    per_unit_ms,
    stack_cost_ratio,
    with_bundle,
)
from services.bench.members import MemberWatcher
from services.bench.report import build_report, members_table, print_report
from services.common.catalog import validate_catalog
from services.common.settings import CommonSettings
from services.operators.catalog_file import load_catalog_file

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TODAY = date(2026, 12, 7)


@pytest.fixture(scope="module")
def demo() -> dict[str, Any]:
    return load_catalog_file(ROOT / "deploy" / "demo" / "catalog.yaml")


def test_no_bundle_of_the_demo_catalog_closes_with_no_department_acting(
    demo: dict[str, Any],
) -> None:
    # Why the bench brings a bundle of its own: each demo bundle has a member that is not instant.
    assert demo["bundles"] and bundles_closing_alone(demo, TODAY) == []


def test_the_bench_bundle_is_of_instant_online_items_and_the_catalog_takes_it(
    demo: dict[str, Any],
) -> None:
    bundle = bench_bundle(demo, TODAY, 3)
    items = {i["code"]: i for i in demo["items"]}
    members = [items[m["item"]] for m in bundle["members"]]
    assert bundle["code"] == BENCH_BUNDLE_CODE and len(members) == 3
    assert all(m["instant"] and m["mode"] == "online" for m in members)
    assert {m["category"] for m in members} == {bundle["category"]}
    assert len({m["owner"] for m in members}) > 1  # members go to several departments

    loaded = with_bundle(demo, bundle)
    parsed, problems = validate_catalog(loaded)
    assert problems == [] and parsed is not None
    assert closes_alone(loaded, bundle, TODAY)
    assert bundles_closing_alone(loaded, TODAY) == [BENCH_BUNDLE_CODE]
    assert BENCH_BUNDLE_CODE not in {b["code"] for b in demo["bundles"]}  # the demo is untouched
    assert with_bundle(loaded, bundle)["bundles"].count(bundle) == 1  # replaced, not doubled


def test_a_bundle_of_more_members_than_instant_online_items_is_refused(
    demo: dict[str, Any],
) -> None:
    with pytest.raises(ValueError, match="instant online items"):
        bench_bundle(demo, TODAY, 50)
    with pytest.raises(ValueError):
        bench_bundle(demo, TODAY, 1)


def test_a_member_out_of_force_does_not_close_alone(demo: dict[str, Any]) -> None:
    bundle = bench_bundle(demo, TODAY, 2)
    first = bundle["members"][0]["item"]
    ended = with_bundle(demo, bundle)
    for item in ended["items"]:
        if item["code"] == first:
            item["effective_to"] = "2026-01-01"
    assert not closes_alone(ended, bundle, TODAY)


def test_members_are_counted_when_they_closed_and_their_bundle_is_known() -> None:
    members_of = {"B1": ["c1", "c2", "c3"], "B2": ["c4", "c5"]}
    closed = {"c1": 1.0, "c2": 1.0, "c3": 1.0, "c4": 2.0, "x": 3.0}
    assert closed_members(["B1", "B2", "B3"], members_of, closed) == 4  # B3 not read yet
    assert bundle_done("B1", members_of, closed)
    assert not bundle_done("B2", members_of, closed)  # c5 still open
    assert not bundle_done("B3", members_of, closed)  # members unknown: not done


def test_cpu_per_unit_counts_only_the_processes_under_test() -> None:
    cpu_s = {
        "intake-1": 1.2,
        "routing-1": 0.6,
        "postgresql": 0.3,
        "kafka-1": 0.3,
        "bench-client": 5.0,
        "load-generator": 0.2,
        "machine": 9.0,
        "others": 1.0,
    }
    got = per_unit_ms(cpu_s, 600)
    assert got == {
        "intake-1": 2.0,
        "kafka-1": 0.5,
        "postgresql": 0.5,
        "routing-1": 1.0,
        "stack": 4.0,
    }
    assert per_unit_ms(cpu_s, 0) == {}


def test_idle_cpu_over_the_sides_time_is_not_charged_to_its_cases() -> None:
    cpu_s = {"intake-1": 2.0, "kafka-1": 0.5, "postgresql": 1.0}
    idle = {"intake-1": 0.01, "kafka-1": 0.05, "machine": 0.3}
    assert net_of_idle(cpu_s, idle, 20.0) == {"intake-1": 1.8, "kafka-1": 0.0, "postgresql": 1.0}


def test_the_ratio_is_per_member_over_per_case_where_both_were_measured() -> None:
    per_case = {"intake-1": 2.0, "routing-1": 1.0, "kafka-1": 0.0, "stack": 4.0}
    per_member = {"intake-1": 3.0, "routing-1": 1.0, "kafka-1": 0.2, "stack": 5.0, "new": 1.0}
    assert cost_ratios(per_member, per_case) == {"intake-1": 1.5, "routing-1": 1.0, "stack": 1.25}
    assert stack_cost_ratio({"ratio": {"stack": 1.25}}) == 1.25
    assert stack_cost_ratio(None) is None and stack_cost_ratio({"ratio": {}}) is None


def a_side(rate: float, per_unit: dict[str, float], closed: int) -> dict[str, Any]:
    latency = {"count": closed, "p50_ms": 100.0, "p95_ms": 200.0, "p99_ms": 300.0}
    return {
        "rate": rate,
        "submitted": closed,
        "closed": closed,
        "closed_members": closed * 3,
        "cpu_ms_per_unit": per_unit,
        "submit_to_closed": latency,
    }


def test_the_report_carries_the_target_and_prints_the_rows(demo: dict[str, Any]) -> None:
    bundle = bench_bundle(demo, TODAY, 3)
    members = {
        "bundle": bundle,
        "singles": a_side(30, {"intake-1": 2.0, "stack": 4.0}, 600),
        "bundles": a_side(10, {"intake-1": 4.0, "stack": 7.0}, 200),
        "ratio": {"intake-1": 2.0, "stack": 1.75},
    }
    report = build_report(None, [], {}, None, members=members)
    target = next(t for t in report["targets"] if t["name"].startswith("bundle CPU per member"))
    assert target["target"] == MEMBER_COST_RATIO_TARGET
    assert target["measured"] == 1.75 and target["met"] is False
    assert report["members"] is members

    unmeasured = build_report(None, [], {})
    target = next(t for t in unmeasured["targets"] if t["name"].startswith("bundle CPU"))
    assert target["measured"] is None and target["met"] is None

    out = io.StringIO()
    print_report(report, Console(file=out, width=200))
    printed = out.getvalue()
    assert "cost per member" in printed and "1.75" in printed and "intake-1" in printed
    table = io.StringIO()
    Console(file=table, width=200).print(members_table(members))
    assert "7.00" in table.getvalue() and "4.00" in table.getvalue()


def test_the_watcher_learns_a_bundles_members_from_its_submission() -> None:
    watcher = MemberWatcher(CommonSettings.model_construct())
    submitted = {
        "bundle_id": "B1",
        "members": [{"case_id": "c1", "item_code": "A"}, {"case_id": "c2", "item_code": "B"}],
    }
    watcher.take(BundleSubmitted.TYPE, json.dumps(submitted).encode())
    watcher.take("gov.bundle.delivered.v1", json.dumps({"bundle_id": "B2"}).encode())
    watcher.take(BundleSubmitted.TYPE, None)
    assert watcher.members_of == {"B1": ["c1", "c2"]}
    watcher.closed = {"c1": 1.0}
    assert not bundle_done("B1", watcher.members_of, watcher.closed)
    watcher.closed["c2"] = 2.0
    assert bundle_done("B1", watcher.members_of, watcher.closed)
