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
from aiokafka.structs import ConsumerRecord

from contracts.events import CATALOG_TOPIC, CatalogPublished
from services.common.dlq import unreadable_record
from services.common.envelope import Envelope
from services.common.kafka import ReadableFetch, client_options
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
        self._fetch: ReadableFetch | None = None
        self._unparseable: list[tuple[TopicPartition, int, Exception]] = []

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
        if self._fetch is None or self._fetch.consumer is not consumer:
            self._fetch = ReadableFetch(consumer, self._note_unparseable)
        batch = await self._fetch.getmany(timeout_ms=timeout_ms)
        for records in batch.values():
            for record in records:
                await self._take(record)
        while self._unparseable:
            tp, offset, error = self._unparseable.pop(0)
            await self._unreadable(
                unreadable_record(tp.topic, tp.partition, offset),
                f"unreadable: the Kafka client cannot parse the record ({error!r})",
            )

    def _note_unparseable(self, tp: TopicPartition, offset: int, error: Exception) -> None:
        log.error("unparseable catalog record skipped", offset=offset, error=repr(error))
        self._unparseable.append((tp, offset, error))

    async def _take(self, record: ConsumerRecord[bytes, bytes]) -> None:
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
