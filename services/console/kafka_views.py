"""The console's reads of Kafka: the live stream's reader, the dead letters, consumer lag, and
the newest records MirrorMaker 2 brought from each partner region (services.console.links).

The console never joins a consumer group: every stream reader assigns itself all partitions
of the case topics (the bundle and dead-letter topics, and what partner regions send here) and
starts at their end, or at the first record at or after a given time, so watching never moves
anyone's offsets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from contracts.events import BUNDLE_TOPIC, CASE_TOPICS, DLQ_TOPIC, XREGION_TOPIC
from services.common.dlq import ORIGINAL_OFFSET, ORIGINAL_PARTITION, ORIGINAL_TOPIC, REASON, SOURCE
from services.common.kafka import ReadableFetch, client_options
from services.common.logs import get_logger, mask_text
from services.common.settings import CommonSettings
from services.console.links import (
    HEARTBEATS_TOPIC,
    LinkSeen,
    NewestRecord,
    is_partner_xregion,
    mirrored_topic,
    partner_aliases,
)

log = get_logger(__name__)

STREAM_TOPICS = (*CASE_TOPICS, BUNDLE_TOPIC, DLQ_TOPIC)
# and every partner's `<alias>.xregion.out.v1` here (DESIGN.md §9): what partner regions send
# this one, of which the stream shows what is addressed to this region (services.console.stream)
T = TypeVar("T")


def _decode(raw: bytes | None) -> str:
    return raw.decode("utf-8", errors="replace") if raw is not None else ""


def header_text(headers: Any) -> dict[str, str]:
    """A record's headers as text (the first value of a repeated name wins)."""
    found: dict[str, str] = {}
    for name, raw in headers or ():
        found.setdefault(str(name).lower(), _decode(raw))
    return found


class KafkaViews:
    """One metadata consumer and one admin client, opened on first use and reopened after a
    failure (the console starts, and keeps answering, while Kafka is down)."""

    def __init__(self, settings: CommonSettings, *, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._lock = asyncio.Lock()
        self._cache: dict[str, tuple[float, Any]] = {}

    # -- clients -------------------------------------------------------------------------------

    def new_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            **client_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            client_id="tongban-console",
            request_timeout_ms=self.settings.kafka_request_timeout_ms,
            # A stream reads up to ~100 partitions; small fetches keep a replay's memory low.
            fetch_max_bytes=1024 * 1024,
            max_partition_fetch_bytes=64 * 1024,
        )

    async def _clients(self) -> tuple[AIOKafkaConsumer, AIOKafkaAdminClient]:
        if self._consumer is None or self._admin is None:
            await self.close()
            consumer = self.new_consumer()
            admin = AIOKafkaAdminClient(
                **client_options(self.settings),
                client_id="tongban-console-admin",
                request_timeout_ms=self.settings.kafka_request_timeout_ms,
            )
            try:
                await consumer.start()
                await admin.start()
            except BaseException:
                await _quietly(consumer.stop())
                await _quietly(admin.close())
                raise
            self._consumer, self._admin = consumer, admin
        return self._consumer, self._admin

    async def close(self) -> None:
        consumer, admin = self._consumer, self._admin
        self._consumer = self._admin = None
        if consumer is not None:
            await _quietly(consumer.stop())
        if admin is not None:
            await _quietly(admin.close())

    async def _cached(self, key: str, ttl_s: float, compute: Callable[[], Awaitable[T]]) -> T:
        """One computation at a time, answered from a short cache: every open console page
        polls, Kafka is asked once per `ttl_s`."""
        async with self._lock:
            hit = self._cache.get(key)
            if hit is not None and time.monotonic() - hit[0] < ttl_s:
                value: T = hit[1]
                return value
            try:
                async with asyncio.timeout(self.timeout_s):
                    value = await compute()
            except BaseException:
                await self.close()  # reconnect next time
                raise
            self._cache[key] = (time.monotonic(), value)
            return value

    async def partitions(self, topics: tuple[str, ...]) -> list[TopicPartition]:
        """Every partition of those of `topics` that exist (the admin's metadata)."""
        _consumer, admin = await self._clients()
        found: list[TopicPartition] = []
        for topic in await admin.describe_topics(list(topics)):
            if topic.get("error_code") == 0:
                found.extend(
                    TopicPartition(topic["topic"], p["partition"]) for p in topic["partitions"]
                )
        return sorted(found, key=lambda tp: (topics.index(tp.topic), tp.partition))

    # -- the live stream -----------------------------------------------------------------------

    async def open_stream(self, start: datetime | None) -> tuple[AIOKafkaConsumer, int]:
        """A started consumer assigned to every partition of the stream's topics, positioned
        at their end (or at the first record at or after `start`); and how many partitions.
        Positions are fixed before this returns: nothing published afterwards is missed."""
        partitions = await self._cached("stream-partitions", 30.0, self._stream_partitions)
        if not partitions:
            self._cache.pop("stream-partitions", None)
            raise LookupError(f"none of the topics {', '.join(STREAM_TOPICS)} exists yet")
        consumer = self.new_consumer()
        await consumer.start()
        try:
            async with asyncio.timeout(self.timeout_s):
                consumer.assign(partitions)
                positions = dict(await consumer.end_offsets(partitions))
                if start is not None:
                    ms = int(start.timestamp() * 1000)
                    found = await consumer.offsets_for_times(dict.fromkeys(partitions, ms))
                    for tp, hit in found.items():
                        if hit is not None:
                            positions[tp] = hit.offset
                for tp, offset in positions.items():
                    consumer.seek(tp, offset)
        except BaseException:
            await _quietly(consumer.stop())
            raise
        return consumer, len(partitions)

    async def _stream_partitions(self) -> list[TopicPartition]:
        _consumer, admin = await self._clients()
        partners = sorted(t for t in await admin.list_topics() if is_partner_xregion(t))
        return await self.partitions((*STREAM_TOPICS, *partners))

    # -- dead letters --------------------------------------------------------------------------

    async def dead_letters(self, recent: int) -> dict[str, Any]:
        return await self._cached(f"dlq:{recent}", 2.0, lambda: self._dead_letters(recent))

    async def _dead_letters(self, recent: int) -> dict[str, Any]:
        consumer, _admin = await self._clients()
        partitions = await self.partitions((DLQ_TOPIC,))
        if not partitions:
            return {"topic": DLQ_TOPIC, "exists": False, "count": 0, "recent": []}
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        count = sum(max(0, ends[tp] - starts[tp]) for tp in partitions)
        letters = await self._read_tail(starts, ends, recent) if recent and count else []
        return {
            "topic": DLQ_TOPIC,
            "exists": True,
            "count": count,
            "partitions": len(partitions),
            "recent": letters,
        }

    async def _read_tail(
        self,
        starts: Mapping[TopicPartition, int],
        ends: Mapping[TopicPartition, int],
        recent: int,
    ) -> list[dict[str, Any]]:
        """The last `recent` records of each non-empty partition, newest first overall."""
        records = await self._tail_records(starts, ends, recent)
        return [_letter(r) for r in records[:recent]]

    async def _tail_records(
        self,
        starts: Mapping[TopicPartition, int],
        ends: Mapping[TopicPartition, int],
        recent: int,
    ) -> list[Any]:
        """Up to the last `recent` records of each non-empty partition, newest first."""
        reader = self.new_consumer()
        await reader.start()
        try:
            wanted = {tp: end for tp, end in ends.items() if end > starts[tp]}
            reader.assign(list(wanted))
            for tp, end in wanted.items():
                reader.seek(tp, max(starts[tp], end - recent))
            records: list[Any] = []
            pending = dict(wanted)
            fetch = ReadableFetch(reader)
            while pending:
                batch = await fetch.getmany(timeout_ms=500, max_records=1000)
                if not batch:
                    break  # nothing more arrives (compaction or deletion left gaps)
                for tp, found in batch.items():
                    records.extend(found)
                    if found and found[-1].offset + 1 >= pending.get(tp, 0):
                        pending.pop(tp, None)
        finally:
            await _quietly(reader.stop())
        records.sort(key=lambda r: (r.timestamp, r.partition, r.offset), reverse=True)
        return records

    # -- links to partner regions --------------------------------------------------------------

    async def links(self) -> list[LinkSeen]:
        """Per partner alias (a `<alias>.heartbeats`, `.xregion.out.v1` or `.catalog.v1` here),
        the newest heartbeat and the newest record on its `<alias>.xregion.out.v1`."""
        return await self._cached("links", 2.0, self._links)

    async def _links(self) -> list[LinkSeen]:
        _consumer, admin = await self._clients()
        seen = []
        for alias, kinds in partner_aliases(await admin.list_topics()).items():
            heartbeats = xregion = None
            if HEARTBEATS_TOPIC in kinds:
                heartbeats = await self.newest_record(mirrored_topic(alias, HEARTBEATS_TOPIC))
            if XREGION_TOPIC in kinds:
                xregion = await self.newest_record(mirrored_topic(alias, XREGION_TOPIC))
            seen.append(LinkSeen(alias, heartbeats, xregion))
        return seen

    async def newest_record(self, topic: str) -> NewestRecord | None:
        """How many records `topic` holds and its newest record's timestamp (by timestamp, over
        its partitions); None when it does not exist."""
        consumer, _admin = await self._clients()
        partitions = await self.partitions((topic,))
        if not partitions:
            return None
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        count = sum(max(0, ends[tp] - starts[tp]) for tp in partitions)
        # A few records back, not one: the last offset may be a transaction marker.
        records = await self._tail_records(starts, ends, 3) if count else []
        return NewestRecord(count, records[0].timestamp if records else None)

    # -- consumer lag --------------------------------------------------------------------------

    async def lag(self) -> list[dict[str, Any]]:
        return await self._cached("lag", 2.0, self._lag)

    async def _lag(self) -> list[dict[str, Any]]:
        consumer, admin = await self._clients()
        groups = sorted({str(g[0]) for g in await admin.list_consumer_groups()})
        committed: dict[str, dict[TopicPartition, int]] = {}
        for group in groups:
            offsets = await admin.list_consumer_group_offsets(group)
            committed[group] = {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
        partitions = sorted({tp for offsets in committed.values() for tp in offsets})
        ends = await consumer.end_offsets(partitions) if partitions else {}
        rows = []
        for group in groups:
            for tp, offset in sorted(committed[group].items()):
                end = ends.get(tp)
                rows.append(
                    {
                        "group": group,
                        "topic": tp.topic,
                        "partition": tp.partition,
                        "committed": offset,
                        "end": end,
                        "lag": max(0, end - offset) if end is not None else None,
                    }
                )
        return rows


def _letter(record: Any) -> dict[str, Any]:
    headers = header_text(record.headers)
    return {
        "time": datetime.fromtimestamp(record.timestamp / 1000, UTC).isoformat(),
        "partition": record.partition,
        "offset": record.offset,
        "case_id": mask_text(_decode(record.key)) or None,
        "type": headers.get("ce_type"),
        "reason": mask_text(headers.get(REASON, "")),
        "source": headers.get(SOURCE),
        "from_topic": headers.get(ORIGINAL_TOPIC),
        "from_partition": headers.get(ORIGINAL_PARTITION),
        "from_offset": headers.get(ORIGINAL_OFFSET),
    }


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception as exc:  # closing after a failure: the failure is what matters
        log.debug("closing a Kafka client failed", error=repr(exc))
