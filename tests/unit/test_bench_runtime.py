"""The runtime bench's pure parts (services/bench/runtime.py): the event it applies and
publishes, its figures per event, and the budget table of issue 18."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from contracts.events import CaseRouted
from services.bench.report import build_report, print_report, print_runtime_budget
from services.bench.runtime import (
    BUDGET_MS,
    HTTP_SUBMISSION,
    NoopHandler,
    RuntimeConfig,
    budget_rows,
    case_id,
    idle_cpu_ms_per_s,
    per_event_ms,
    published_total,
    routed_envelope,
    routed_payload,
    window_figures,
)
from services.bench.submission import cpu_ms_per_submission
from services.common.envelope import Envelope

pytestmark = pytest.mark.unit


def test_the_routed_event_is_about_a_kilobyte_and_valid_on_the_wire() -> None:
    payload = routed_payload(case_id("r1", "backlog", 7))
    assert 1024 <= len(payload.model_dump_json()) < 1024 + 200
    key, value, headers = routed_envelope(payload).to_record()
    envelope = Envelope.from_record(key, value, headers)
    assert (envelope.type, envelope.subject) == (CaseRouted.TYPE, "YZ-r1-backlog-000007")
    assert CaseRouted.model_validate(envelope.data) == payload


def test_the_routed_event_grows_to_the_size_asked() -> None:
    small, large = routed_payload("YZ-1", 200), routed_payload("YZ-1", 4096)
    assert small.application.materials == []
    assert len(large.model_dump_json()) >= 4096
    # Each material is a document of its own (a digest per case and number).
    digests = [m.sha256 for m in large.application.materials]
    assert len(set(digests)) == len(digests)


def test_figures_per_event() -> None:
    assert per_event_ms(0.3, 2000) == 0.15
    assert per_event_ms(0.3, 0) is None
    assert idle_cpu_ms_per_s(0.05, 2.0) == 25.0
    figures = window_figures(0.5, 2.0, 1000, batches=4)
    assert figures == {
        "events": 1000,
        "cpu_s": 0.5,
        "wall_s": 2.0,
        "cpu_ms_per_event": 0.5,
        "events_per_s": 500.0,
        "batches": 4,
    }


def test_a_published_event_costs_its_write_and_its_relay() -> None:
    writes = window_figures(1.0, 4.0, 1000)  # 1 ms per event
    relay = window_figures(0.22, 0.5, 1100)  # 0.2 ms per event (the warm-up's rows too)
    total = published_total(writes, relay)
    assert total["events"] == 1000
    assert total["cpu_ms_per_event"] == pytest.approx(1.2)


def a_result() -> dict[str, Any]:
    return {
        "traced": True,
        "figures": {
            "applied, backlog": window_figures(0.6, 3.0, 5000, events_per_batch=416.7),
            "applied, paced": window_figures(
                0.5, 5.0, 500, events_per_batch=1.2, rate=100.0, idle_cpu_ms_per_s=12.5
            ),
            "published: outbox writes, batched": window_figures(0.4, 1.0, 2000),
            "published: relay": window_figures(0.1, 1.0, 2000),
        },
    }


def test_each_figure_beside_its_budget() -> None:
    rows = {row["figure"]: row for row in budget_rows(a_result())}
    assert list(rows) == [
        "applied, backlog",
        "applied, paced",
        "published: outbox writes, batched",
        "published: relay",
    ]
    backlog, paced, batched, relay = rows.values()
    assert (backlog["cpu_ms_per_event"], backlog["budget_ms"], backlog["ratio"]) == (
        0.12,
        BUDGET_MS["applied"],
        0.8,
    )
    assert (paced["cpu_ms_per_event"], paced["ratio"], paced["events_per_batch"]) == (
        1.0,
        6.67,
        1.2,
    )
    assert (batched["cpu_ms_per_event"], batched["ratio"]) == (0.2, 2.0)
    assert (relay["budget_ms"], relay["ratio"]) == (BUDGET_MS["published"], 0.5)


def test_the_budget_table_in_the_runtime_command_and_the_report() -> None:
    result = a_result()
    result["budget"] = budget_rows(result)
    out = io.StringIO()
    print_runtime_budget(result, Console(file=out, width=200))
    table = out.getvalue()
    assert "runtime budget" in table and "spans as the services make them" in table
    assert "applied, paced" in table and "6.67" in table and "0.80" in table
    assert "12.5 ms of CPU a second with nothing to apply" in table

    report = build_report(None, [], {"cpus": 2}, runtime=result)
    assert report["runtime"] is result
    out = io.StringIO()
    print_report(report, Console(file=out, width=200))
    assert "runtime budget" in out.getvalue()

    out = io.StringIO()
    print_runtime_budget(None, Console(file=out, width=200))
    assert out.getvalue() == ""


async def test_the_noop_handler_says_when_it_has_seen_its_target() -> None:
    handler = NoopHandler(target=2)
    envelope = routed_envelope(routed_payload("YZ-1"))
    await handler(None, envelope, None)  # type: ignore[arg-type]
    assert not handler.reached.is_set()
    await handler(None, envelope, None)  # type: ignore[arg-type]
    assert handler.reached.is_set() and handler.applied == 2


def test_cpu_per_submission_is_what_intake_spent_above_its_idle() -> None:
    # 1.2 s over 4 s while idling at 0.05 s a second: 1.0 s of work for 200 submissions
    assert cpu_ms_per_submission(1.2, 4.0, 0.05, 200) == 5.0
    assert cpu_ms_per_submission(0.1, 4.0, 0.05, 200) == 0.0  # noise below idle: none
    assert cpu_ms_per_submission(1.2, 4.0, 0.05, 0) is None


def test_the_http_figure_beside_its_budget() -> None:
    result = {"figures": {HTTP_SUBMISSION: {"events": 200, "cpu_ms_per_event": 2.5}}}
    (row,) = budget_rows(result)
    assert (row["figure"], row["budget_ms"], row["ratio"]) == (HTTP_SUBMISSION, 1.0, 2.5)


def test_each_figure_profiles_into_a_file_of_its_own() -> None:
    cfg = RuntimeConfig(bootstrap="b", database_url="d", run_id="r", profile_dir="/tmp/p")
    assert str(cfg.profile("published: outbox writes, batched")) == (
        "/tmp/p/published-outbox-writes-batched.pstats"
    )
    assert str(cfg.profile("applied, paced")) == "/tmp/p/applied-paced.pstats"
    assert RuntimeConfig(bootstrap="b", database_url="d", run_id="r").profile("x") is None
