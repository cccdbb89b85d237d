"""Proven under faults (reduced size): no case lost, no effect doubled, no case's events out of
order while brokers, service processes, relays and PostgreSQL fail under load, no member of a
bundle lost or doubled and no bundle delivered other than once; poison ends in the dead letters
with reasons; intake past its capacity answers fast and loses nothing.

`make faults` runs the same scenarios with thousands of cases each."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.common.settings import CommonSettings
from tests.faults.conftest import OVERLOAD, VERDICTS
from tests.faults.harness import Stack, run_scenario
from tests.faults.suite import overload, scenarios

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

SCENARIOS = {spec.name: spec for spec in scenarios("reduced")}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_no_case_lost_and_no_effect_doubled(
    name: str, replicated_services: int, fault_catalog: dict[str, Any]
) -> None:
    settings = CommonSettings()
    verdict = await run_scenario(
        SCENARIOS[name], Stack(replicas=replicated_services), fault_catalog, settings
    )
    VERDICTS.append(verdict)
    details = json.dumps(verdict.details, default=str)[:4000]
    assert verdict.submitted == verdict.details["planned"], details
    assert verdict.refused == 0, details
    assert verdict.lost == 0, details
    assert verdict.terminal == verdict.submitted, details
    assert verdict.duplicate_effects == 0, details
    assert verdict.order_violations == 0, details
    assert verdict.details["problems"] == [], details
    assert verdict.details["results_rows"] == verdict.submitted, details
    assert verdict.details["ratings_rows"] == verdict.details["ratings_asked"], details
    # Bundles under the same faults: each submitted, every member ended once, each bundle
    # delivered and closed once (tests.faults.bundles).
    assert verdict.bundles == SCENARIOS[name].bundles > 0, details
    assert verdict.members >= verdict.bundles, details
    assert verdict.members_lost == 0, details
    assert verdict.members_doubled == 0, details
    if SCENARIOS[name].faults:
        assert verdict.details["faults"] == len(SCENARIOS[name].faults), details
    if SCENARIOS[name].poison_per_topic:
        poison = verdict.details["poison"]
        assert poison["missing"] == [], details
        for topic, counts in poison["per_topic"].items():
            assert counts["readers"] >= 2, topic
            assert counts["dead_lettered_by_every_reader"] == counts["sent"], topic


async def test_intake_past_capacity_answers_fast_and_loses_nothing(
    replicated_services: int, fault_catalog: dict[str, Any]
) -> None:
    report = await overload(
        Stack(replicas=replicated_services),
        fault_catalog,
        CommonSettings(),
        measure_s=5,
        overload_s=6,
    )
    OVERLOAD.append(
        f"overload: capacity {report.capacity_per_s}/s, offered {report.offered_per_s}/s, "
        f"answers {report.answers}, timeouts {report.timeouts}, slowest {report.max_answer_s}s, "
        f"accepted {report.accepted}, terminal {report.terminal}, lost {report.lost}"
    )
    assert set(report.answers) <= {200, 201, 429, 503}, report
    assert report.timeouts == 0, report
    assert report.other_errors == [], report
    assert report.without_retry_after == 0, report
    assert report.accepted > 0, report
    assert report.lost == 0, report
    assert report.terminal == report.accepted, report
