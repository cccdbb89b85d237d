"""Routing over time: a case is routed by the catalog version in force at its submission; a
case failed by a faulty catalog waits in triage and, once the catalog is fixed, an operator
re-routes it (`POST /v1/triage/{case_id}/retry`) and it goes on to the end.

The session shares one catalog: whatever these tests load, the demo catalog is loaded again
(and followed by intake) before they end, so later tests still find their items.
"""

from __future__ import annotations

import asyncio
import copy
import random
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from contracts.events import CaseSubmitted
from services.cli.applicants import application_for
from services.common.envelope import Envelope
from services.common.settings import CommonSettings
from tests.conftest import eventually
from tests.e2e.conftest import INTAKE, ROUTING, items_where, wait_status
from tests.kafka_helpers import header, produce, read_topic

pytestmark = pytest.mark.e2e

CITY_TZ = ZoneInfo("Asia/Shanghai")


def foreign_submission(
    application: dict[str, Any], case_id: str, submitted_at: datetime
) -> Envelope:
    """A submission from another intake system straight to Kafka, stamped `submitted_at`."""
    payload = CaseSubmitted.model_validate(
        {"case_id": case_id, "application": application, "submitted_at": submitted_at}
    )
    return Envelope(
        type="gov.case.submitted.v1",
        source="/portal/province",
        subject=case_id,
        data=payload.model_dump(mode="json"),
    )


def instant_online_items(catalog: dict[str, Any]) -> list[dict[str, Any]]:
    """Fully online and instant, in force today: such a case closes with no one deciding."""
    items = items_where(catalog, lambda i: i["mode"] == "online" and bool(i.get("instant")))
    assert items, "the demo catalog has no instant online item"
    return items


async def load(http: httpx.AsyncClient, raw: dict[str, Any]) -> dict[str, Any]:
    answer = await http.post(f"{ROUTING}/v1/catalog", json=raw)
    assert answer.status_code == 201, answer.text
    version: dict[str, Any] = answer.json()
    assert version["items"] == len(raw["items"])
    return version


async def intake_follows(http: httpx.AsyncClient, raw: dict[str, Any]) -> None:
    codes = sorted(i["code"] for i in raw["items"])

    async def same_items() -> bool:
        items = await http.get(f"{INTAKE}/v1/items")
        return items.status_code == 200 and sorted(i["code"] for i in items.json()) == codes

    await eventually(same_items, what="intake follows the catalog in force")


@pytest.fixture
async def demo_catalog_restored(
    catalog: dict[str, Any], http: httpx.AsyncClient
) -> AsyncIterator[dict[str, Any]]:
    """The demo catalog, in force again (and at intake) when the test ends, pass or fail."""
    yield catalog
    await load(http, catalog)
    await intake_follows(http, catalog)


async def adopted(http: httpx.AsyncClient, case_id: str) -> None:
    """Intake answers for a case another system submitted once it has read the submission."""

    async def known() -> bool:
        return (await http.get(f"{INTAKE}/v1/cases/{case_id}")).status_code == 200

    await eventually(known, what=f"intake adopts {case_id}")


async def triage_entry(http: httpx.AsyncClient, case_id: str) -> dict[str, Any] | None:
    entries = (await http.get(f"{ROUTING}/v1/triage", params={"limit": 1000})).json()
    return next((e for e in entries if e["case_id"] == case_id), None)


async def retry(http: httpx.AsyncClient, case_id: str) -> httpx.Response:
    return await http.post(f"{ROUTING}/v1/triage/{case_id}/retry")


async def test_a_case_failed_by_a_faulty_catalog_is_retried_after_the_fix_and_closes(
    demo_catalog_restored: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
    settings: CommonSettings,
) -> None:
    catalog = demo_catalog_restored
    # An instant, fully-online item with electronic delivery: it closes with no one deciding.
    item = rng.choice(instant_online_items(catalog))
    application = application_for(catalog, item, rng, channel="online", delivery="electronic")

    # Versions: the demo catalog (v0), then a faulty one that lost the item (v1).
    v0 = await load(http, catalog)
    faulty = copy.deepcopy(catalog)
    faulty["items"] = [i for i in faulty["items"] if i["code"] != item["code"]]
    v1 = await load(http, faulty)
    v0_at = datetime.fromisoformat(v0["loaded_at"])
    v1_at = datetime.fromisoformat(v1["loaded_at"])
    assert v1["version"] > v0["version"] and v1_at > v0_at

    # Two cases of the item from another intake system: one submitted while the faulty
    # version was in force, one submitted before it was loaded (its event arrives only now).
    failed_id, early_id = (f"OT-{uuid.uuid4().hex[:12]}" for _ in range(2))
    submitted_late = datetime.now(v1_at.tzinfo)
    assert submitted_late > v1_at
    await produce(
        settings,
        "case.intake.v1",
        [
            foreign_submission(application, failed_id, submitted_late).to_record(),
            foreign_submission(application, early_id, v0_at + (v1_at - v0_at) / 2).to_record(),
        ],
    )

    # The late one fails on the faulty version and waits in triage.
    entry = await eventually(
        lambda: triage_entry(http, failed_id), what=f"{failed_id} listed in triage"
    )
    assert entry["failure"]["code"] == "unknown_item"
    assert entry["rule"] == "R1-unknown-item" and entry["catalog_version"] == v1["version"]
    assert "事项" in entry["failure"]["explanation"] and "item" in entry["failure"]["explanation"]
    await adopted(http, failed_id)
    view = await wait_status(http, failed_id, "route_failed")
    assert view["route"] is None and view["failure"]["code"] == "unknown_item"

    # The early one is routed by the version in force at its submission, which had the item.
    await adopted(http, early_id)
    early = await wait_status(http, early_id, "closed")
    assert early["route"]["catalog_version"] == v0["version"]
    assert early["route"]["rule"] == "R4-online"
    assert await triage_entry(http, early_id) is None

    # A retry before the fix fails the same way again (and stays in triage).
    again = await retry(http, failed_id)
    assert again.status_code == 200, again.text
    assert again.json()["route"] is None
    assert again.json()["failure"]["code"] == "unknown_item"
    assert again.json()["rule"] == "R1-unknown-item"

    # The operator fixes the catalog, then retries twice at once: one routes it, one is told
    # it is no longer in triage.
    v2 = await load(http, catalog)
    first, second = await asyncio.gather(retry(http, failed_id), retry(http, failed_id))
    answers = sorted([first, second], key=lambda a: a.status_code)
    assert [a.status_code for a in answers] == [200, 409], [a.text for a in answers]
    routed, refused = answers[0].json(), answers[1].json()
    assert refused["code"] == "not_in_triage"
    assert routed["failure"] is None and routed["rule"] == "R4-online"
    route = routed["route"]
    assert route["catalog_version"] == v2["version"] and route["handled_by"] == item["owner"]
    assert route["inputs"]["item_code"] == item["code"]
    assert route["inputs"]["catalog_version"] == str(v2["version"])
    assert route["inputs"]["item_mode"] == "online" and route["inputs"]["channel"] == "online"
    # R1 still judges the item by the submission date (a city-local date).
    assert route["inputs"]["submitted_on"] == submitted_late.astimezone(CITY_TZ).date().isoformat()
    assert "全程网办" in route["explanation"] and "online" in route["explanation"]

    # It goes on to the end and leaves triage.
    closed = await wait_status(http, failed_id, "closed", with_events=["gov.case.routed.v1"])
    assert closed["route"]["catalog_version"] == v2["version"] and closed["failure"] is None
    types = [e["type"] for e in closed["timeline"]]
    assert types.index("gov.case.route_failed.v1") < types.index("gov.case.routed.v1")
    assert "gov.case.closed.v1" in types
    assert await triage_entry(http, failed_id) is None

    # On the wire: route_failed twice (first routing, the retry before the fix), then one
    # routed event naming the department.
    async def routing_records() -> list[tuple[str, str | None]] | None:
        records = [
            (header(r, "ce_type") or "", header(r, "ce_handledby"))
            for r in await read_topic(settings, "case.routing.v1", idle=0.5)
            if header(r, "ce_subject") == failed_id
        ]
        return records if len(records) >= 3 else None

    assert await eventually(routing_records, what="routing events of the case") == [
        ("gov.case.route_failed.v1", None),
        ("gov.case.route_failed.v1", None),
        ("gov.case.routed.v1", item["owner"]),
    ]


async def test_only_a_failed_case_can_be_retried(
    catalog: dict[str, Any], http: httpx.AsyncClient, rng: random.Random
) -> None:
    item = rng.choice(instant_online_items(catalog))
    answer = await http.post(
        f"{INTAKE}/v1/cases",
        json=application_for(catalog, item, rng, channel="online", delivery="electronic"),
    )
    assert answer.status_code == 201, answer.text
    case_id = answer.json()["case_id"]
    await wait_status(
        http, case_id, "routed", "accepted", "approved", "result_issued", "delivered", "closed"
    )

    refused = await retry(http, case_id)
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "not_in_triage"
    assert refused.headers["content-type"].startswith("application/problem+json")

    missing = await retry(http, f"NOPE-{uuid.uuid4().hex[:8]}")
    assert missing.status_code == 404, missing.text
    assert missing.json()["code"] == "case_not_found"
