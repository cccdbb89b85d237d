"""SIGTERM is graceful: a service finishes its batch and commits its offsets before it exits,
so the next start does not redeliver what it already applied (no duplicate storm)."""

from __future__ import annotations

import os
import random
import re
import signal
from typing import Any

import httpx
import pytest

from services.cli.applicants import application_for
from tests.conftest import RUN_DIR, eventually
from tests.e2e.conftest import INTAKE, ROUTING, items_where, services, wait_status

pytestmark = pytest.mark.e2e


def duplicates_seen(metrics: str) -> float:
    """Routing's count of records it had already applied (inbox hits) since it started."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("tongban_events_consumed_total{") and 'outcome="duplicate"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_sigterm_commits_so_a_restart_redelivers_nothing(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
) -> None:
    instant = items_where(catalog, lambda i: bool(i.get("instant")))
    cases = []
    for _ in range(20):
        answer = await http.post(
            f"{INTAKE}/v1/cases",
            json=application_for(catalog, rng.choice(instant), rng, delivery="electronic"),
        )
        assert answer.status_code == 201, answer.text
        cases.append(answer.json()["case_id"])
    for case_id in cases:
        await wait_status(
            http, case_id, "routed", "accepted", "approved", "result_issued", "delivered", "closed"
        )

    pid_file = RUN_DIR / "services" / "routing-1.pid"
    pid = int(pid_file.read_text())
    log_file = RUN_DIR / "logs" / "routing-1.log"
    before = log_file.stat().st_size
    os.kill(pid, signal.SIGTERM)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    await eventually(gone, timeout=40, what="routing to exit on SIGTERM")
    with log_file.open("rb") as log:
        log.seek(before)
        tail = log.read().decode(errors="replace")
    assert re.search(r"consumer stopped", tail), "routing did not stop its consumer cleanly"
    services("up")  # starts routing again; the others are still running

    async def metrics() -> str | None:
        answer = await http.get(f"{ROUTING}/metrics")
        return answer.text if answer.status_code == 200 else None

    text = await eventually(metrics, what="the restarted routing's metrics")
    # Its consumer group has rejoined and read on from the committed offsets: nothing applied
    # before the stop comes round again.
    await eventually(lambda: _ready(http), what="routing ready again")
    assert duplicates_seen(text) == 0
    answer = await http.post(
        f"{INTAKE}/v1/cases",
        json=application_for(catalog, rng.choice(instant), rng, delivery="electronic"),
    )
    await wait_status(http, answer.json()["case_id"], "closed")
    assert duplicates_seen((await http.get(f"{ROUTING}/metrics")).text) == 0


async def _ready(http: httpx.AsyncClient) -> bool:
    return (await http.get(f"{ROUTING}/readyz")).status_code == 200
