"""Kafka reading for the operator commands: group-less consumers that assign partitions
themselves (a tail or a dead-letter listing must never join a service's group nor commit)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from contracts.events import CATALOG_TOPIC, CatalogPublished
from services.common.catalog import validate_catalog
from services.common.envelope import Envelope, EnvelopeError
from services.common.kafka import ReadableFetch, client_options
from services.common.settings import CommonSettings
from services.policy.catalog_index import CatalogIndex

Record: TypeAlias = ConsumerRecord[bytes, bytes]


def make_reader(settings: CommonSettings, *, client_id: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        **client_options(settings),  # bootstrap list, TLS and SASL as the services connect
        client_id=client_id,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=settings.kafka_request_timeout_ms,
    )


async def partitions_of(
    consumer: AIOKafkaConsumer, topics: Iterable[str]
) -> dict[str, list[TopicPartition]]:
    """The partitions of each topic that exists (missing topics are left out)."""
    wanted = list(dict.fromkeys(topics))
    cluster = await consumer._client.fetch_all_metadata()
    found: dict[str, list[TopicPartition]] = {}
    for topic in wanted:
        parts = cluster.partitions_for_topic(topic)
        if parts:
            found[topic] = [TopicPartition(topic, p) for p in sorted(parts)]
    if found:
        # Track these topics' metadata in the client so that offset look-ups find leaders.
        await consumer._client.set_topics(list(found))
    return found


class StartKind(StrEnum):
    now = "now"
    beginning = "beginning"
    time = "time"
    offset = "offset"


@dataclass(frozen=True)
class StartAt:
    kind: StartKind = StartKind.now
    time: datetime | None = None
    offset: int | None = None

    def describe(self) -> str:
        if self.kind is StartKind.time and self.time is not None:
            return f"from {self.time.isoformat()}"
        if self.kind is StartKind.offset:
            return f"from offset {self.offset} of each partition"
        return "from the beginning" if self.kind is StartKind.beginning else "from now"


async def seek_start(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], start: StartAt
) -> dict[TopicPartition, int]:
    """Position every (assigned) partition; return the end offsets seen at the start."""
    ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
    if start.kind is StartKind.now:
        for tp in partitions:
            consumer.seek(tp, ends[tp])
    elif start.kind is StartKind.beginning:
        await consumer.seek_to_beginning(*partitions)
    elif start.kind is StartKind.time:
        assert start.time is not None
        ms = int(start.time.timestamp() * 1000)
        found = await consumer.offsets_for_times(dict.fromkeys(partitions, ms))
        for tp in partitions:
            hit = found.get(tp)
            consumer.seek(tp, hit.offset if hit is not None else ends[tp])
    else:
        assert start.offset is not None
        begins: dict[TopicPartition, int] = await consumer.beginning_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, min(max(start.offset, begins[tp]), ends[tp]))
    return ends


async def read_until_end(
    consumer: AIOKafkaConsumer,
    ends: dict[TopicPartition, int],
    *,
    timeout: float = 60.0,
) -> list[Record]:
    """Everything from the current positions up to `ends` (a snapshot; later records wait)."""
    records: list[Record] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {tp for tp, end in ends.items() if await consumer.position(tp) < end}
    fetch = ReadableFetch(consumer)  # steps over (and logs) records nobody can parse
    while pending:
        if loop.time() > deadline:
            raise TimeoutError(f"reading {sorted(str(tp) for tp in pending)} took over {timeout}s")
        batch = await fetch.getmany(*pending, timeout_ms=500)
        for tp, recs in batch.items():
            records.extend(r for r in recs if r.offset < ends[tp])
        pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
    return records


async def read_topic_snapshot(
    settings: CommonSettings,
    topic: str,
    *,
    since: datetime | None = None,
    client_id: str = "tongban-cli",
    missing_ok: bool = False,
) -> list[Record]:
    """Every record of `topic` (from `since`, if given) up to its end when called."""
    consumer = make_reader(settings, client_id=client_id)
    await consumer.start()
    try:
        found = await partitions_of(consumer, [topic])
        if topic not in found:
            if missing_ok:
                return []
            raise LookupError(f"topic {topic} does not exist")
        partitions = found[topic]
        consumer.assign(partitions)
        start = StartAt(StartKind.time, time=since) if since else StartAt(StartKind.beginning)
        ends = await seek_start(consumer, partitions, start)
        return await read_until_end(consumer, ends)
    finally:
        await consumer.stop()


async def fetch_records(
    settings: CommonSettings,
    topic: str,
    wanted: Iterable[tuple[int, int]],
    *,
    client_id: str = "tongban-cli",
) -> dict[tuple[int, int], Record | None]:
    """The records at these (partition, offset) places; None where there is none (beyond the
    end, deleted by retention, or no such partition)."""
    wanted = sorted(set(wanted))
    out: dict[tuple[int, int], Record | None] = dict.fromkeys(wanted)
    consumer = make_reader(settings, client_id=client_id)
    await consumer.start()
    try:
        found = await partitions_of(consumer, [topic])
        if topic not in found:
            raise LookupError(f"topic {topic} does not exist")
        existing = {tp.partition for tp in found[topic]}
        tps = [TopicPartition(topic, p) for p in sorted({p for p, _ in wanted} & existing)]
        if not tps:
            return out
        consumer.assign(tps)
        begins: dict[TopicPartition, int] = await consumer.beginning_offsets(tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        for partition, offset in wanted:
            tp = TopicPartition(topic, partition)
            if tp not in begins or not begins[tp] <= offset < ends[tp]:
                continue
            consumer.seek(tp, offset)
            record = await _first_from(consumer, tp, ends[tp])
            if record is not None and record.offset == offset:
                out[(partition, offset)] = record
        return out
    finally:
        await consumer.stop()


async def _first_from(
    consumer: AIOKafkaConsumer, tp: TopicPartition, end: int, timeout: float = 30.0
) -> Record | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline and await consumer.position(tp) < end:
        batch = await consumer.getmany(tp, timeout_ms=500, max_records=1)
        for rec in batch.get(tp, []):
            return rec
    return None


async def latest_catalog(settings: CommonSettings) -> tuple[int, CatalogIndex] | None:
    """The newest valid catalog version on `catalog.v1`, with its index; None if none."""
    records = await read_topic_snapshot(
        settings, CATALOG_TOPIC, client_id="tongban-cli-catalog", missing_ok=True
    )
    best: tuple[int, dict[str, Any]] | None = None
    for record in records:
        if record.value is None:
            continue
        try:
            envelope = Envelope.from_record(record.key, record.value, list(record.headers))
            published = CatalogPublished.model_validate(envelope.data)
        except (EnvelopeError, ValueError):
            continue
        if best is None or published.version > best[0]:
            best = (published.version, published.catalog)
    if best is None:
        return None
    catalog, _problems = validate_catalog(best[1])
    return None if catalog is None else (best[0], CatalogIndex(catalog))
