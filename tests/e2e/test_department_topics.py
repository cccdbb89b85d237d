"""Department isolation: every department of the loaded catalog has its topic
(`dept.<code>.cases.v1`), and a routed case reaches its department's topic, as the same record
as on case.routing.v1, and no other department's; on first routing and on a triage retry.
"""

from __future__ import annotations

import asyncio
import copy
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, TypeAlias

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from contracts.events import ROUTING_TOPIC
from services.cli.applicants import application_for
from services.common.kafka import department_topic
from services.common.settings import CommonSettings
from tests.conftest import eventually
from tests.e2e.conftest import INTAKE, items_where, wait_status
from tests.e2e.test_routing_over_time import (
    adopted,
    foreign_submission,
    intake_follows,
    load,
    retry,
    triage_entry,
)
from tests.kafka_helpers import header, produce

pytestmark = pytest.mark.e2e

Record: TypeAlias = ConsumerRecord[bytes, bytes]


async def existing_topics(settings: CommonSettings) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def read_topics(settings: CommonSettings, topics: Sequence[str]) -> list[Record]:
    """Every record now on these topics: one consumer, from the beginning to the end offsets."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    try:
        partitions: list[TopicPartition] = []
        for topic in topics:
            for _ in range(50):
                ids = consumer.partitions_for_topic(topic)
                if ids:
                    break
                await consumer._client.force_metadata_update()
                await asyncio.sleep(0.1)
            assert ids, f"topic {topic} has no partitions"
            partitions += [TopicPartition(topic, p) for p in sorted(ids)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Record] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            assert loop.time() < deadline, "reading the department topics timed out"
            batch = await consumer.getmany(timeout_ms=200)
            records += [r for recs in batch.values() for r in recs]
        return records
    finally:
        await consumer.stop()


def of_case(records: list[Record], case_id: str) -> list[Record]:
    return [r for r in records if header(r, "ce_subject") == case_id]


async def routed_record(settings: CommonSettings, case_id: str) -> Record:
    """The case's `gov.case.routed.v1` on case.routing.v1."""

    async def found() -> Record | None:
        records = of_case(await read_topics(settings, [ROUTING_TOPIC]), case_id)
        routed = [r for r in records if header(r, "ce_type") == "gov.case.routed.v1"]
        assert len(routed) <= 1, "one routed event per case"
        return routed[0] if routed else None

    record: Record = await eventually(found, what=f"{case_id} routed on {ROUTING_TOPIC}")
    return record


async def assert_only_on_its_department_topic(
    settings: CommonSettings, catalog: dict[str, Any], case_id: str, department: str
) -> None:
    """The routed record of the case is on its department's topic (same ce_id, headers, key and
    value) and on no other department's topic; a route failure is on none."""
    on_routing = await routed_record(settings, case_id)
    assert header(on_routing, "ce_handledby") == department
    own = department_topic(department)

    async def on_own_topic() -> list[Record] | None:
        return of_case(await read_topics(settings, [own]), case_id) or None

    copies: list[Record] = await eventually(on_own_topic, what=f"{case_id} on {own}")
    assert len(copies) == 1, f"{case_id} is {len(copies)} times on {own}"
    (copy_record,) = copies
    assert header(copy_record, "ce_id") == header(on_routing, "ce_id")
    assert header(copy_record, "ce_type") == "gov.case.routed.v1"
    assert header(copy_record, "ce_handledby") == department
    assert sorted(copy_record.headers) == sorted(on_routing.headers)
    assert copy_record.key == on_routing.key == case_id.encode()
    assert copy_record.value == on_routing.value

    others = sorted(
        {department_topic(d["code"]) for d in catalog["departments"] if d["code"] != department}
    )
    assert others
    leaked = of_case(await read_topics(settings, others), case_id)
    assert not leaked, f"{case_id} leaked to {sorted({r.topic for r in leaked})}"


async def test_every_department_of_the_loaded_catalog_has_its_topic(
    catalog: dict[str, Any], settings: CommonSettings
) -> None:
    wanted = {department_topic(d["code"]) for d in catalog["departments"]}
    assert "dept.YZ01-MKT.cases.v1" in wanted

    async def all_there() -> set[str] | None:
        missing = wanted - await existing_topics(settings)
        return None if missing else wanted

    # POST /v1/catalog creates them before it answers; a short grace for slow metadata.
    await eventually(all_there, timeout=15, what="every department topic exists")


async def test_a_routed_case_reaches_its_department_topic_and_no_other(
    catalog: dict[str, Any], http: httpx.AsyncClient, rng: random.Random, settings: CommonSettings
) -> None:
    # Delegated to the district: decided by the applicant's district department of the line.
    items = items_where(
        catalog, lambda i: i["mode"] == "delegated" and i.get("delegated_to") == "district"
    )
    assert items, "the demo catalog has no item delegated to the district"
    item = rng.choice(items)
    answer = await http.post(
        f"{INTAKE}/v1/cases",
        json=application_for(catalog, item, rng, channel="counter", delivery="electronic"),
    )
    assert answer.status_code == 201, answer.text
    case_id = answer.json()["case_id"]
    view = await wait_status(
        http,
        case_id,
        "routed",
        "accepted",
        "approved",
        "denied",
        "result_issued",
        "delivered",
        "closed",
    )
    department = view["route"]["handled_by"]
    assert department != item["owner"]  # a district unit, not the municipal owner
    await assert_only_on_its_department_topic(settings, catalog, case_id, department)


@pytest.fixture
async def demo_catalog_back(
    catalog: dict[str, Any], http: httpx.AsyncClient
) -> AsyncIterator[dict[str, Any]]:
    """The demo catalog in force again (and at intake) when the test ends, pass or fail."""
    yield catalog
    await load(http, catalog)
    await intake_follows(http, catalog)


async def test_a_case_routed_by_a_triage_retry_reaches_its_department_topic(
    demo_catalog_back: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
    settings: CommonSettings,
) -> None:
    catalog = demo_catalog_back
    items = items_where(catalog, lambda i: i["mode"] == "online" and bool(i.get("instant")))
    assert items, "the demo catalog has no instant online item"
    item = rng.choice(items)
    application = application_for(catalog, item, rng, channel="online", delivery="electronic")

    # A catalog that lost the item: a case of it (from another intake system) fails routing.
    faulty = copy.deepcopy(catalog)
    faulty["items"] = [i for i in faulty["items"] if i["code"] != item["code"]]
    v1 = await load(http, faulty)
    case_id = f"OT-{uuid.uuid4().hex[:12]}"
    submitted_at = datetime.now(datetime.fromisoformat(v1["loaded_at"]).tzinfo)
    await produce(
        settings,
        "case.intake.v1",
        [foreign_submission(application, case_id, submitted_at).to_record()],
    )
    entry = await eventually(lambda: triage_entry(http, case_id), what=f"{case_id} in triage")
    assert entry["failure"]["code"] == "unknown_item"
    await adopted(http, case_id)

    # The failure names no department: it reaches no department topic.
    everyone = sorted({department_topic(d["code"]) for d in catalog["departments"]})
    assert not of_case(await read_topics(settings, everyone), case_id)

    # After the fix, the retry routes it to the owner, and the owner's topic has it.
    await load(http, catalog)
    answer = await retry(http, case_id)
    assert answer.status_code == 200, answer.text
    department = answer.json()["route"]["handled_by"]
    assert department == item["owner"]
    await assert_only_on_its_department_topic(settings, catalog, case_id, department)
    await wait_status(http, case_id, "closed")
