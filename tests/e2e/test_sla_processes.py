"""SLA escalation with real approval processes: two extra approval processes whose clock runs
60 days ahead fire the warnings and the overdue of an open case, one of them is killed and
restarted on the way, and each step still reaches Kafka exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from typing import Any

import httpx
import pytest

from services.cli.applicants import application_for
from services.cli.devclient import APPROVAL_PORT
from services.common.settings import CommonSettings
from tests.conftest import ROOT, RUN_DIR, eventually
from tests.e2e.conftest import APPROVAL, INTAKE, items_where, wait_status
from tests.kafka_helpers import header, read_topic

pytestmark = pytest.mark.e2e

AHEAD_S = 60 * 24 * 3600


def approval_process(port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TONGBAN_HTTP_PORT": str(port),
        "TONGBAN_SERVICE": "approval",
        "TONGBAN_CLOCK_OFFSET_S": str(AHEAD_S),
        "TONGBAN_SLA_POLL_S": "0.2",
    }
    log = open(RUN_DIR / "logs" / f"approval-ahead-{port}.log", "ab")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "services.approval"], cwd=ROOT, env=env, stdout=log, stderr=log
    )


async def test_warnings_and_overdue_fire_once_with_two_processes_and_a_restart(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
    settings: CommonSettings,
) -> None:
    item = rng.choice(
        items_where(
            catalog,
            lambda i: (
                not i.get("instant")
                and int(i.get("time_limit_days") or 0) >= 2
                and i["mode"] == "municipal"
            ),
        )
    )
    cases = []
    for _ in range(5):
        answer = await http.post(f"{INTAKE}/v1/cases", json=application_for(catalog, item, rng))
        assert answer.status_code == 201, answer.text
        cases.append(answer.json()["case_id"])
    for case_id in cases:
        assert (await wait_status(http, case_id, "accepted"))["deadline"] is not None

    first, second = approval_process(APPROVAL_PORT + 10), approval_process(APPROVAL_PORT + 20)
    try:
        await asyncio.sleep(2.0)
        first.send_signal(signal.SIGKILL)  # killed mid-flight
        first.wait()
        first = approval_process(APPROVAL_PORT + 10)  # and restarted

        async def all_fired() -> bool:
            for case_id in cases:
                view = (await http.get(f"{INTAKE}/v1/cases/{case_id}")).json()
                types = [e["type"] for e in view["timeline"]]
                if "gov.case.overdue.v1" not in types or types.count("gov.case.sla_warning.v1") < 2:
                    return False
            return True

        await eventually(all_fired, timeout=90, what="warnings and overdue of every case")
    finally:
        for process in (first, second):
            process.terminate()
        for process in (first, second):
            process.wait(timeout=30)

    department = (await wait_status(http, cases[0], "accepted"))["route"]["handled_by"]
    board = (await http.get(f"{APPROVAL}/v1/sla/board", params={"department": department})).json()
    (row,) = board
    assert row["department"] == department and row["open"] >= len(cases)
    assert row["warned"] >= len(cases), row  # every case passed its warnings
    at_risk = (
        await http.get(
            f"{APPROVAL}/v1/sla/cases", params={"department": department, "within_days": 365}
        )
    ).json()
    assert set(cases) <= {c["case_id"] for c in at_risk}

    fired: Counter[tuple[str, str, str]] = Counter()
    seen_ids: set[str] = set()
    for record in await read_topic(settings, "case.approval.v1", idle=1.0):
        subject, event_type = header(record, "ce_subject") or "", header(record, "ce_type") or ""
        event_id = header(record, "ce_id") or ""
        if (
            subject in cases
            and event_type in ("gov.case.sla_warning.v1", "gov.case.overdue.v1")
            and event_id not in seen_ids
        ):
            seen_ids.add(event_id)  # an outbox re-publish repeats an id; that is one effect
            ratio = str(json.loads(record.value or b"{}").get("elapsed_ratio", 1.0))
            fired[(subject, event_type, ratio)] += 1
    assert len(fired) == len(cases) * 3, fired
    assert set(fired.values()) == {1}, "a step fired more than once"
