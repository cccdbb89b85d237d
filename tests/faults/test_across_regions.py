"""Proven under faults across regions (跨省通办, DESIGN.md §9): every forwarded case ends exactly
once in BOTH regions' views while the MirrorMaker 2 link is down for a while, the handling
region's four services are SIGKILLed (and started again) and MirrorMaker itself is SIGKILLed
and restarted.

Where it runs: `make test`'s three-broker phase, beside the other fault scenarios: region 1 is
that phase's cluster with its services as two processes each (`replicated_services`), region 2
a single broker, PostgreSQL and one process per service next to it, with MirrorMaker between
them (tests/two_regions.py), all started once for this module and stopped at its end. Its row
joins the fault suite's table (`tongban under faults (reduced)`): submitted, terminal (closed
in both views), lost, duplicate effects (an event twice in a view), order violations (an event
after `closed` in a view), max lag (cases waiting to cross when the link came back) and
recovery (seconds from then until the last of them was adopted).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.cli.federation import (
    Clients,
    CrossCase,
    Region,
    advance,
    plan_cross_cases,
    submit,
    view,
)
from tests.faults.conftest import VERDICTS
from tests.faults.harness import RANK, Verdict
from tests.two_regions import SecondRegion, linked_regions

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

SCENARIO = "across regions: link down, kill -9"
CASES_PER_WAY = 12
SUBMIT_EVERY_S = 0.5
DRAIN_S = 240.0


@pytest.fixture(scope="module")
async def two_regions(fault_catalog: dict[str, Any]) -> AsyncIterator[tuple[Region, Region]]:
    """Region 2 and the link beside the fault phase's region 1 (its catalog already loaded),
    each intake listing the other's cross_region items."""
    async with linked_regions(SecondRegion.beside_the_suite()) as (yz, lz, _):
        yield yz, lz


def sigkill(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


async def test_every_forwarded_case_ends_once_in_both_regions_under_link_and_process_faults(
    two_regions: tuple[Region, Region],
) -> None:
    second = SecondRegion.beside_the_suite()
    regions = two_regions
    rng = random.Random(SCENARIO)
    cases = plan_cross_cases(regions, CASES_PER_WAY, rng)
    rng.shuffle(cases)
    clients = Clients({r.city: r.client() for r in regions})
    notes: list[str] = []
    refused: list[str] = []
    backlog: list[CrossCase] = []
    relinked_at = 0.0
    try:
        for n, case in enumerate(cases):
            share = n / len(cases)
            if n == len(cases) // 4:
                await asyncio.to_thread(second.link, "down")
                notes.append(f"link down at {share:.0%}")
            if n == len(cases) // 2:
                pids = [second.service_pid(s) for s in SERVICES]
                killed = [s for s, pid in zip(SERVICES, pids, strict=True) if sigkill(pid)]
                notes.append(f"region 2 SIGKILL {','.join(killed)} at {share:.0%}")
                await gone(pids)  # their ports are free once they are
                await asyncio.to_thread(second.services, "up")
            if n == 2 * len(cases) // 3:
                backlog = [c for c in cases[:n] if c.case_id and not await adopted(clients, c)]
                await asyncio.to_thread(second.link, "up")
                relinked_at = time.monotonic()
                notes.append(f"link up at {share:.0%}, {len(backlog)} cases waiting to cross")
            if n == 5 * len(cases) // 6:
                notes.append(f"MirrorMaker SIGKILL at {share:.0%}: {sigkill(second.mirror_pid())}")
                await asyncio.to_thread(second.link, "up")
            answer = await submit(clients, case)
            if answer.status_code != 201:
                refused.append(f"{case.item['code']}: {answer.status_code} {answer.text[:200]}")
            await asyncio.sleep(SUBMIT_EVERY_S)
        recovery_s = await until_adopted(clients, backlog, relinked_at)
        submitted = [c for c in cases if c.case_id]
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline and not all(c.ended for c in submitted):
            await asyncio.gather(*(advance(clients, c) for c in submitted if not c.ended))
            await asyncio.sleep(0.5)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients.by_city.values()))
    doubled = [f"{c.case_id} {t}" for c in submitted for t in doubled_events(c)]
    late = [f"{c.case_id} {t}" for c in submitted for t in after_closed(c)]
    lost = [
        f"{c.case_id}: {c.origin_status}/{c.handler_status}"
        + (f" {c.origin_view['failure']}" if c.origin_view.get("failure") else "")
        for c in submitted
        if not c.ended
    ]
    verdict = Verdict(
        scenario=SCENARIO,
        submitted=len(submitted),
        terminal=sum(c.ended for c in submitted),
        lost=len(lost),
        duplicate_effects=len(doubled),
        order_violations=len(late),
        max_lag=len(backlog),
        recovery_s=recovery_s,
        refused=len(refused),
        details={
            "planned": len(cases),
            "ways": dict(Counter(f"{c.origin.city}->{c.handler.city}" for c in cases)),
            "faults": notes,
            "lost": lost,
            "doubled": doubled,
            "after_closed": late,
            "refused": refused,
            "problems": [],
        },
    )
    VERDICTS.append(verdict)
    details = json.dumps(verdict.details, default=str)[:4000]
    assert verdict.refused == 0, details
    assert verdict.submitted == len(cases), details
    assert verdict.max_lag > 0, f"no case waited for the link: {details}"
    assert verdict.lost == 0, details
    assert verdict.terminal == verdict.submitted, details
    assert verdict.duplicate_effects == 0, details
    assert verdict.order_violations == 0, details


SERVICES = ("intake", "routing", "approval", "delivery")


async def gone(pids: list[int | None], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            await asyncio.sleep(0.1)


async def adopted(clients: Clients, case: CrossCase) -> bool:
    return await view(clients.of(case.handler), case.handler, case.case_id) != {}


async def until_adopted(
    clients: Clients, backlog: list[CrossCase], since: float, timeout: float = 180
) -> float | None:
    """Seconds from `since` until every case of the backlog is adopted by its handler."""
    waiting = list(backlog)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        found = await asyncio.gather(*(adopted(clients, c) for c in waiting))
        waiting = [c for c, done in zip(waiting, found, strict=True) if not done]
        if waiting:
            await asyncio.sleep(0.5)
    return None if waiting else round(time.monotonic() - since, 1)


def doubled_events(case: CrossCase) -> list[str]:
    """Events a view shows twice (same type from the same source): a doubled effect."""
    found = []
    for where, shown in (("origin", case.origin_view), ("handler", case.handler_view)):
        counts = Counter((e["type"], e["source"]) for e in shown.get("timeline", []))
        found += [f"{where} {t} from {s} x{n}" for (t, s), n in counts.items() if n > 1]
    return found


def after_closed(case: CrossCase) -> list[str]:
    """Lifecycle events a view lists after its `closed` (the case ended, then moved on)."""
    found = []
    for where, shown in (("origin", case.origin_view), ("handler", case.handler_view)):
        types = [e["type"] for e in shown.get("timeline", []) if e["type"] in RANK]
        if "gov.case.closed.v1" in types:
            rest = types[types.index("gov.case.closed.v1") + 1 :]
            found += [f"{where} {t} after closed" for t in rest if t != "gov.case.closed.v1"]
    return found
