"""The bench's cost across regions (issue 18): the items it compares, the per-region totals, the
ratio and its target in the report."""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from services.bench.member_cost import cost_ratios, per_unit_ms
from services.bench.report import build_report, print_report, xregion_table
from services.bench.xregion_cost import (
    LINK,
    XREGION_COST_RATIO_TARGET,
    comparable_items,
    region_of,
    with_region_totals,
)
from services.operators.catalog_file import load_catalog_file

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TODAY = date(2026, 12, 7)


@pytest.fixture(scope="module")
def catalogs() -> tuple[dict[str, Any], dict[str, Any]]:
    demo = ROOT / "deploy" / "demo"
    return load_catalog_file(demo / "catalog.yaml"), load_catalog_file(
        demo / "partner-catalog.yaml"
    )


def test_the_demo_catalogs_pair_the_partners_instant_cross_region_items_with_the_same_codes(
    catalogs: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    home, partner = catalogs
    pairs = comparable_items(home, partner, TODAY)
    assert [(p["code"], h["code"]) for p, h in pairs] == [
        ("MED-0401", "MED-0401"),
        ("SOC-0101", "SOC-0101"),
    ]
    for theirs, ours in pairs:
        assert theirs["scope"] == "cross_region" and theirs["owner"].startswith("LZ-")
        assert ours["owner"].startswith("YZ-")
        assert all(i["instant"] and i["mode"] == "online" for i in (theirs, ours))


def test_an_item_that_needs_a_department_or_has_no_counterpart_is_not_compared(
    catalogs: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    home, partner = catalogs
    partner = {**partner, "items": [dict(i) for i in partner["items"]]}
    for item in partner["items"]:
        if item["code"] == "SOC-0101":
            item["instant"] = False
    assert [p["code"] for p, _ in comparable_items(home, partner, TODAY)] == ["MED-0401"]
    # Not yet in force here: no counterpart, nothing left to compare.
    home = {**home, "items": [{**i, "effective_from": "2030-01-01"} for i in home["items"]]}
    with pytest.raises(ValueError, match="cross_region"):
        comparable_items(home, partner, TODAY)


def test_each_process_counts_in_its_region_or_the_link() -> None:
    assert region_of("intake-1") == "region1" and region_of("postgresql") == "region1"
    assert region_of("r2 intake-1") == "region2" and region_of("r2 kafka-1") == "region2"
    assert region_of(LINK) == LINK


def test_the_totals_per_region_sum_the_processes_and_leave_the_stack_as_it_was() -> None:
    cpu_s = {
        "intake-1": 1.0,
        "kafka-1": 0.5,
        "r2 routing-1": 0.75,
        "r2 postgresql": 0.25,
        "mirrormaker": 0.5,
        "load-generator": 3.0,  # never the stack's
        "bench-client": 2.0,
    }
    got = with_region_totals(per_unit_ms(cpu_s, 500))
    assert got["stack"] == 6.0
    assert (got["region1"], got["region2"], got[LINK]) == (3.0, 2.0, 1.0)
    assert got["region1"] + got["region2"] + got[LINK] == got["stack"]
    assert with_region_totals({}) == {}


def a_side(per_unit: dict[str, float], closed: int) -> dict[str, Any]:
    latency = {"count": closed, "p50_ms": 100.0, "p95_ms": 200.0, "p99_ms": 300.0}
    return {
        "rate": 10.0,
        "offered": closed,
        "submitted": closed,
        "closed": closed,
        "cpu_ms_per_unit": per_unit,
        "submit_to_closed": latency,
    }


def test_the_report_carries_the_ratio_of_both_regions_and_the_link_against_its_target() -> None:
    single = with_region_totals({"intake-1": 4.0, "r2 intake-1": 0.5, "stack": 4.5})
    cross = with_region_totals(
        {"intake-1": 3.0, "r2 intake-1": 4.0, "mirrormaker": 1.0, "stack": 8.0}
    )
    xregion: dict[str, Any] = {
        "items": [{"partner": "SOC-0101", "home": "SOC-0101"}],
        "partner_city": "LZ",
        "home_city": "YZ",
        "singles": a_side(single, 200),
        "cross_region": a_side(cross, 200),
        "ratio": cost_ratios(cross, single),
    }
    assert xregion["ratio"]["stack"] == round(8.0 / 4.5, 3)  # 1.778: over the target
    xregion["measured"] = {"when": "2026-12-08T02:00:00+00:00", "commit": "abc1234"}
    report = build_report(None, [], {"commit": "abc1234"}, xregion=xregion)
    target = next(t for t in report["targets"] if t["name"].startswith("cross-region"))
    assert target["target"] == XREGION_COST_RATIO_TARGET == 1.5
    assert target["measured"] == 1.778 and target["met"] is False
    assert target["where"] == "SOC-0101" and report["xregion"] is xregion
    later = build_report(None, [], {"commit": "def5678"}, xregion=xregion)
    target = next(t for t in later["targets"] if t["name"].startswith("cross-region"))
    assert target["where"] == "SOC-0101; an earlier run (abc1234, 2026-12-08T02:00:00+00:00)"

    unmeasured = build_report(None, [], {})
    target = next(t for t in unmeasured["targets"] if t["name"].startswith("cross-region"))
    assert target["measured"] is None and target["met"] is None

    out = io.StringIO()
    print_report(report, Console(file=out, width=200))
    assert "cost across regions" in out.getvalue() and "1.78" in out.getvalue()
    table = io.StringIO()
    Console(file=table, width=200).print(xregion_table(xregion))
    rows = table.getvalue()
    assert "r2 intake-1" in rows and "region2" in rows and "8.00" in rows
