"""Hostile records on every topic the services consume never stall them (issue 13, point 1).

The four services run as processes. A first case closes; copies of its records, bent in the
ways that once stalled a consumer or could (ids and case ids longer than any column, NUL and
bytes that are not UTF-8 in attributes, lone surrogates and 50 000-deep nesting in the data),
go to every partition of every case topic, to `license.v1`, and unreadable versions to
`catalog.v1`. Then a
normal case submitted through intake must still close, every malformed record must be on
the dead-letter topic, and no consumer loop may have crashed and restarted.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from contracts.events import (
    APPROVAL_TOPIC,
    CATALOG_TOPIC,
    DECISIONS_TOPIC,
    DELIVERY_TOPIC,
    INTAKE_TOPIC,
    LICENSE_TOPIC,
    ROUTING_TOPIC,
    DecisionMade,
    LicenseRevoked,
)
from services.cli.applicants import application_for
from services.common.envelope import Envelope
from services.common.settings import CommonSettings
from tests.conftest import eventually
from tests.e2e.conftest import APPROVAL, DELIVERY, INTAKE, ROUTING, items_where
from tests.e2e.test_case_loop import close_case, submit
from tests.integration.test_hostile_records import noise
from tests.kafka_helpers import header, read_topic

pytestmark = pytest.mark.e2e

Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]
CASE_TOPICS_READ = (INTAKE_TOPIC, ROUTING_TOPIC, DECISIONS_TOPIC, APPROVAL_TOPIC, DELIVERY_TOPIC)


def replace(headers: list[tuple[str, bytes]], **new: bytes) -> list[tuple[str, bytes]]:
    return [(k, v) for k, v in headers if k not in new] + list(new.items())


def bent(run: str, template: Record) -> dict[str, tuple[Record, bool]]:
    """Variants of a valid record: name -> (record, whether it is malformed, i.e. must be
    dead-lettered; the others may be applied or dead-lettered)."""
    key, value, headers = template
    data = json.loads(value)
    long_case = ("HC-" + "9" * 300).encode()
    return {
        "long id": (
            (key, value, replace(headers, ce_id=f"{run}-{noise(1, 6000)}".encode())),
            False,
        ),
        "long case id": (
            (long_case, value, replace(headers, ce_id=f"{run}-c".encode(), ce_subject=long_case)),
            False,
        ),
        "NUL in id": ((key, value, replace(headers, ce_id=f"{run}-\x00".encode())), True),
        "not UTF-8": (
            (key, value, replace(headers, ce_id=f"{run}-u".encode(), ce_source=b"/\xff\xfe")),
            True,
        ),
        "lone surrogate": (
            (
                key,
                json.dumps({**data, "note": "\ud800"}).encode(),
                replace(headers, ce_id=f"{run}-s".encode()),
            ),
            True,
        ),
        "deep": ((key, b"[" * 50_000, replace(headers, ce_id=f"{run}-d".encode())), True),
    }


def of_case(records: list[ConsumerRecord[bytes, bytes]], case_id: str) -> Record:
    record = next(r for r in records if r.key == case_id.encode())
    assert record.value is not None
    return record.key, record.value, list(record.headers)


async def task_restarts(http: httpx.AsyncClient) -> float:
    total = 0.0
    for base in (INTAKE, ROUTING, APPROVAL, DELIVERY):
        text = (await http.get(f"{base}/metrics")).text
        total += sum(
            float(m.group(1))
            for m in re.finditer(r"^tongban_task_restarts_total\{[^}]*\} (\S+)$", text, re.M)
        )
    return total


async def instant_case(catalog: dict[str, Any], http: httpx.AsyncClient, rng: random.Random) -> str:
    item = rng.choice(items_where(catalog, lambda i: bool(i.get("instant"))))
    answer = await submit(
        http, application_for(catalog, item, rng, channel="counter", delivery="electronic")
    )
    assert answer.status_code == 201, answer.text
    case_id: str = answer.json()["case_id"]
    await close_case(http, case_id, instant=True)
    return case_id


async def test_hostile_records_on_every_consumed_topic_and_a_normal_case_still_closes(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    settings: CommonSettings,
    rng: random.Random,
) -> None:
    first = await instant_case(catalog, http, rng)
    restarts_before = await task_restarts(http)
    run = f"hostile-{uuid.uuid4().hex[:8]}"
    templates: dict[str, Record] = {}
    for topic in (INTAKE_TOPIC, ROUTING_TOPIC, APPROVAL_TOPIC, DELIVERY_TOPIC):
        templates[topic] = of_case(await read_topic(settings, topic, idle=0.5), first)
    # An instant case has no department decision: a decision for it, as a department sends.
    decision = DecisionMade(case_id=first, department="HC-NOBODY", decision="approve")
    templates[DECISIONS_TOPIC] = Envelope(
        type="gov.case.decision.v1",
        source="/dept/HC-NOBODY",
        subject=first,
        data=decision.model_dump(mode="json"),
    ).to_record()

    sent: list[tuple[str, int, int, str, bool]] = []  # topic, partition, offset, name, malformed
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, enable_idempotence=True
    )
    await producer.start()
    try:
        for topic in CASE_TOPICS_READ:
            partitions = sorted(await producer.partitions_for(topic))
            for name, (record, malformed) in bent(run, templates[topic]).items():
                for partition in partitions:  # the normal case's partition is behind them all
                    key, value, headers = record
                    meta = await producer.send_and_wait(
                        topic, key=key, value=value, headers=headers, partition=partition
                    )
                    sent.append((topic, meta.partition, meta.offset, name, malformed))
        # catalog.v1 is compacted (keys required) and read by every process from the start.
        catalog_template = Envelope(
            type="gov.catalog.published.v1", source="/tongban/routing", subject=run, data={}
        ).to_record()
        for name, (record, _malformed) in bent(run, catalog_template).items():
            _key, value, headers = record
            meta = await producer.send_and_wait(
                CATALOG_TOPIC, key=f"{run}/{name}".encode(), value=value, headers=headers
            )
            sent.append((CATALOG_TOPIC, meta.partition, meta.offset, name, True))
        # license.v1 is compacted too (keys required), read by intake's library consumer.
        revoked = LicenseRevoked(license_id=f"EL-{run}", case_id=first, reason="hostile")
        licence_template = Envelope(
            type=LicenseRevoked.TYPE,
            source="/tongban/delivery",
            subject=revoked.license_id,
            data=revoked.model_dump(mode="json"),
        ).to_record()
        for name, (record, malformed) in bent(run, licence_template).items():
            key, value, headers = record
            meta = await producer.send_and_wait(
                LICENSE_TOPIC, key=key, value=value, headers=headers
            )
            sent.append((LICENSE_TOPIC, meta.partition, meta.offset, name, malformed))
    finally:
        await producer.stop()

    second = await instant_case(catalog, http, rng)
    assert second != first

    async def dead_lettered() -> bool:
        letters = await read_topic(settings, "case.dlq.v1", idle=0.5)
        places = {
            (
                header(r, "dlq_topic"),
                int(header(r, "dlq_partition") or -1),
                int(header(r, "dlq_offset") or -1),
            )
            for r in letters
        }
        missing = [s for s in sent if s[4] and (s[0], s[1], s[2]) not in places]
        return not missing

    await eventually(
        dead_lettered, timeout=120, interval=2, what="every malformed record dead-lettered"
    )
    assert await task_restarts(http) == restarts_before, "a consumer loop crashed and restarted"
