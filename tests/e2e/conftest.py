"""End to end: the four services as separate processes on the real stack.

Started once per test session by deploy/local/services.sh (as in production: one process
each); the demo catalog is loaded through routing's API. Tests pick items by their properties
(mode, category, instant...), never by code, so they hold for any catalog.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import date
from typing import Any

import httpx
import pytest

from services.cli.devclient import (
    APPROVAL_PORT,
    DELIVERY_PORT,
    INTAKE_PORT,
    ROUTING_PORT,
    ActingClient,
)
from services.operators.catalog_file import load_catalog_file
from tests.conftest import ROOT, eventually

INTAKE = f"http://127.0.0.1:{INTAKE_PORT}"
ROUTING = f"http://127.0.0.1:{ROUTING_PORT}"
APPROVAL = f"http://127.0.0.1:{APPROVAL_PORT}"
DELIVERY = f"http://127.0.0.1:{DELIVERY_PORT}"
DEMO_CATALOG = ROOT / "deploy" / "demo" / "catalog.yaml"
# Every event of an approved case closed without anyone deciding, in lifecycle order.
APPROVED_CASE_EVENTS = (
    "gov.case.submitted.v1",
    "gov.case.routed.v1",
    "gov.case.accepted.v1",
    "gov.case.approved.v1",
    "gov.case.result_issued.v1",
    "gov.case.delivered.v1",
    "gov.case.closed.v1",
)


def services(command: str, env: Mapping[str, str] | None = None) -> None:
    """deploy/local/services.sh `command`, with the session's environment and `env` on top
    (the services read every TONGBAN_ setting from it)."""
    subprocess.run(
        ["bash", str(ROOT / "deploy/local/services.sh"), command],
        check=True,
        cwd=ROOT,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


@asynccontextmanager
async def shifted_services(offset_s: float) -> AsyncIterator[None]:
    """The four services restarted with their clock `offset_s` seconds ahead
    (TONGBAN_CLOCK_OFFSET_S), and restarted as the session started them afterwards: time rules
    (deadlines, SLA timers, item dates) are tested by shifting the clock, never by sleeping.

    What the services write meanwhile keeps its shifted times; load no catalog while shifted
    (its version would be in force only from the shifted time on, for the rest of the
    session). Needs the `catalog` fixture first: intake's copy is waited for after each
    restart."""
    await asyncio.to_thread(services, "down")
    await asyncio.to_thread(services, "up", {"TONGBAN_CLOCK_OFFSET_S": str(offset_s)})
    items = len(load_catalog_file(DEMO_CATALOG)["items"])
    try:
        async with ActingClient(timeout=30) as client:
            await intake_follows(client, items, what="the shifted intake's catalog")
        yield
    finally:
        await asyncio.to_thread(services, "down")
        await asyncio.to_thread(services, "up")
        async with ActingClient(timeout=30) as client:
            await intake_follows(client, items, what="the restored intake's catalog")


async def intake_follows(client: httpx.AsyncClient, items: int, *, what: str) -> None:
    """Wait until intake's copy of the catalog lists `items` items."""

    async def intake_has_it() -> bool:
        answer = await client.get(f"{INTAKE}/v1/items")
        return answer.status_code == 200 and len(answer.json()) == items

    await eventually(intake_has_it, what=what)


@pytest.fixture(scope="session")
def running_services() -> Iterator[None]:
    services("up")
    try:
        yield
    finally:
        services("down")


@pytest.fixture(scope="session")
async def catalog(running_services: None) -> dict[str, Any]:
    raw = load_catalog_file(DEMO_CATALOG)
    async with ActingClient(timeout=30) as client:
        answer = await client.post(f"{ROUTING}/v1/catalog", json=raw)
        assert answer.status_code == 201, answer.text
        version = answer.json()["version"]
        await intake_follows(
            client, len(raw["items"]), what=f"intake follows catalog version {version}"
        )
    return raw


@pytest.fixture
async def http() -> AsyncIterator[ActingClient]:
    async with ActingClient(timeout=30) as client:
        yield client


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    return random.Random(request.node.name)


def items_where(
    catalog: dict[str, Any],
    predicate: Callable[[dict[str, Any]], bool],
) -> list[dict[str, Any]]:
    today = date.today().isoformat()
    return [
        i
        for i in catalog["items"]
        if predicate(i)
        and str(i.get("effective_from") or "0000") <= today
        and (i.get("effective_to") is None or str(i["effective_to"]) >= today)
    ]


async def case_status(http: httpx.AsyncClient, case_id: str) -> dict[str, Any]:
    answer = await http.get(f"{INTAKE}/v1/cases/{case_id}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def wait_status(
    http: httpx.AsyncClient,
    case_id: str,
    *statuses: str,
    timeout: float = 60,
    with_events: Sequence[str] = (),
) -> dict[str, Any]:
    """The case view once its status is one of `statuses` and its timeline holds every type
    in `with_events`. Kafka orders nothing across topics: intake may apply a case's `closed`
    (delivery topic) a moment before its `approved` (approval topic)."""

    async def reached() -> dict[str, Any] | None:
        answer = await http.get(f"{INTAKE}/v1/cases/{case_id}")
        if answer.status_code == 404:
            return None  # a case sent straight to Kafka is not at intake yet
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        seen = {e["type"] for e in body["timeline"]}
        if body["status"] not in statuses or not seen.issuperset(with_events):
            return None
        return body

    result: dict[str, Any] = await eventually(
        reached,
        timeout=timeout,
        interval=0.2,
        what=f"{case_id} to reach {statuses} with {list(with_events)} in its timeline",
    )
    return result


async def decide_when_listed(
    http: httpx.AsyncClient, case_id: str, department: str, decision: dict[str, Any]
) -> httpx.Response:
    async def listed() -> bool:
        answer = await http.get(f"{APPROVAL}/v1/worklist", params={"department": department})
        return any(e["case_id"] == case_id for e in answer.json())

    await eventually(listed, what=f"{case_id} on {department}'s worklist")
    return await http.post(
        f"{APPROVAL}/v1/cases/{case_id}/decisions", json={"department": department, **decision}
    )
