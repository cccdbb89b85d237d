"""Every process's own copy of the catalog, followed from the compacted `catalog.v1` topic.

Not a consumer group: each process (each replica of intake, approval, ...) needs every
version, so it reads the whole topic itself, from the beginning, and keeps up. Start-up waits
until the copy has caught up with the topic's end, so a fresh process never refuses an item
that is in the catalog.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from contracts.events import CATALOG_TOPIC, CatalogPublished
from services.common.dlq import unreadable_record
from services.common.envelope import Envelope
from services.common.kafka import client_options
from services.common.logs import get_logger
from services.common.settings import CommonSettings

log = get_logger(__name__)

T = TypeVar("T")


class CatalogFollower(Generic[T]):
    """Keeps `build(published)` of every catalog version; `latest` is the newest."""

    def __init__(
        self,
        settings: CommonSettings,
        build: Callable[[CatalogPublished], T],
        *,
        on_unreadable: Callable[[ConsumerRecord[bytes, bytes], str], Awaitable[None]] | None = None,
        topic: str = CATALOG_TOPIC,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.build = build
        self.on_unreadable = on_unreadable
        self.versions: dict[int, T] = {}
        self.published: dict[int, CatalogPublished] = {}
        self.caught_up = asyncio.Event()
        self._stop = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        # The offset after the last record taken: where to rewind to after an unreadable one.
        self._next = 0

    @property
    def latest_version(self) -> int | None:
        return max(self.versions) if self.versions else None

    @property
    def latest(self) -> T | None:
        version = self.latest_version
        return None if version is None else self.versions[version]

    def at(self, version: int) -> T | None:
        return self.versions.get(version)

    def stop(self) -> None:
        self._stop.set()

    def apply(self, published: CatalogPublished) -> None:
        if published.version not in self.versions:
            self.versions[published.version] = self.build(published)
            self.published[published.version] = published
            log.info("catalog version followed", version=published.version)

    async def start(self, timeout: float = 60.0) -> None:
        """Read the topic up to its current end (bounded wait), then keep following in run()."""
        consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            group_id=None,
        )
        await consumer.start()
        self._consumer = consumer
        tp = TopicPartition(self.topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        self._next = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await consumer.position(tp) < end and loop.time() < deadline:
            await self._poll(consumer, 500)
        self.caught_up.set()

    async def run(self) -> None:
        assert self._consumer is not None, "start() first"
        try:
            while not self._stop.is_set():
                await self._poll(self._consumer, 500)
        finally:
            await self._consumer.stop()

    async def _poll(self, consumer: AIOKafkaConsumer, timeout_ms: int) -> None:
        try:
            batch = await consumer.getmany(timeout_ms=timeout_ms)
        except Exception as exc:
            if isinstance(exc, KafkaError):
                raise
            await self._step_over_unreadable(consumer, exc)
            return
        for records in batch.values():
            for record in records:
                await self._take(record)

    async def _take(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self._next = record.offset + 1
        if record.value is None:
            return  # a tombstone: versions are never deleted by us
        try:
            envelope = Envelope.from_record(record.key, record.value, list(record.headers))
            self.apply(CatalogPublished.model_validate(envelope.data))
        except Exception as exc:  # one bad record must not stop the follower
            log.error("unreadable catalog record skipped", offset=record.offset, error=repr(exc))
            await self._unreadable(record, f"unreadable catalog record: {exc}")

    async def _unreadable(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        if self.on_unreadable is not None:
            try:
                await self.on_unreadable(record, reason)
            except Exception as dl_exc:  # the skip is logged either way
                log.error("catalog dead letter failed", error=repr(dl_exc))

    async def _step_over_unreadable(self, consumer: AIOKafkaConsumer, error: Exception) -> None:
        """A record the Kafka client cannot parse (a header name that is not UTF-8) fails the
        fetch, and the client drops what it took before it in that call: rewind to the last
        record taken, take the readable ones one by one, and skip the unreadable one (its dead
        letter names its offset; there are no bytes to copy)."""
        tp = TopicPartition(self.topic, 0)
        consumer.seek(tp, self._next)
        while True:
            try:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=1)
            except Exception as exc:
                if isinstance(exc, KafkaError):
                    raise
                error = exc
                break
            if not batch.get(tp):
                return
            await self._take(batch[tp][0])
        offset = self._next
        log.error("unparseable catalog record skipped", offset=offset, error=repr(error))
        await self._unreadable(
            unreadable_record(tp.topic, tp.partition, offset),
            f"unreadable: the Kafka client cannot parse the record ({error!r})",
        )
        self._next = offset + 1
        consumer.seek(tp, self._next)
