"""`tongban tail`: follow case topics, merged in time order, filtered, masked.

No consumer group: the tail assigns every partition of the chosen topics itself, never
commits, and leaves no trace on the cluster. Records pass the time-order merge buffer
(`merge.py`) first and the filters after, so that a case's facts are learnt in the order its
events happened (`services.common.event_facts.CaseMemory`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from contracts.events import CASE_TOPICS
from services.cli.ops.events import EventView, view_of
from services.cli.ops.filters import select
from services.cli.ops.kafka_io import StartAt, StartKind, make_reader, partitions_of, seek_start
from services.cli.ops.merge import DEFAULT_DELAY_S, TimeMergeBuffer
from services.common.catalog import CatalogIndex
from services.common.event_facts import CaseMemory, EventFilter
from services.common.settings import CommonSettings

POLL_S = 0.2


class TailError(RuntimeError):
    """The tail cannot start (no such topic, broker unreachable...)."""


@dataclass(frozen=True)
class TailOptions:
    topics: tuple[str, ...] = ()  # empty: every case topic of the contract
    include_dlq: bool = False
    start: StartAt = field(default_factory=StartAt)
    filters: EventFilter = field(default_factory=EventFilter)
    catalog: CatalogIndex | None = None  # for --district
    max_events: int | None = None
    idle_timeout: float | None = None
    order_delay: float = DEFAULT_DELAY_S

    def chosen_topics(self, dlq_topic: str) -> tuple[list[str], bool]:
        """(topics, explicit): explicitly named topics must exist; default ones may not."""
        explicit = bool(self.topics)
        topics = list(self.topics) if explicit else list(CASE_TOPICS)
        if self.include_dlq and dlq_topic not in topics:
            topics.append(dlq_topic)
        return topics, explicit


async def run_tail(
    settings: CommonSettings,
    options: TailOptions,
    *,
    emit: Callable[[EventView], None],
    note: Callable[[str], None],
    stop: asyncio.Event,
) -> int:
    """Show events until `stop`, `max_events` shown or `idle_timeout` s without records;
    return how many were shown."""
    consumer = make_reader(settings, client_id=f"{settings.service}-tail")
    await consumer.start()
    try:
        topics, explicit = options.chosen_topics(settings.dlq_topic)
        found = await partitions_of(consumer, topics)
        missing = [t for t in topics if t not in found]
        if missing and (explicit or not found):
            raise TailError(
                f"no such topic {missing} on {settings.kafka_bootstrap}"
                + ("" if explicit else " (create them: tongban topics)")
            )
        if missing:
            note(f"[yellow]not there yet, skipped:[/] {', '.join(missing)}")
        partitions = [tp for tps in found.values() for tp in tps]
        consumer.assign(partitions)
        ends = await seek_start(consumer, partitions, options.start)
        note(
            f"tailing {len(found)} topics ({len(partitions)} partitions) on "
            f"{settings.kafka_bootstrap} {options.start.describe()}; Ctrl-C stops"
        )
        return await _follow(consumer, partitions, ends, options, emit=emit, stop=stop)
    finally:
        await consumer.stop()


async def _follow(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    ends: dict[TopicPartition, int],
    options: TailOptions,
    *,
    emit: Callable[[EventView], None],
    stop: asyncio.Event,
) -> int:
    loop = asyncio.get_running_loop()
    buffer: TimeMergeBuffer[EventView] = TimeMergeBuffer(options.order_delay)
    memory = CaseMemory()
    backlog = options.start.kind is not StartKind.now
    shown = 0
    last_record = loop.time()

    def release(views: list[EventView]) -> bool:
        """Filter and show; True once `max_events` are shown."""
        nonlocal shown
        for view in views:
            if select(view, options.filters, memory=memory, catalog=options.catalog):
                emit(view)
                shown += 1
                if options.max_events is not None and shown >= options.max_events:
                    return True
        return False

    while not stop.is_set():
        due = buffer.next_due(loop.time())
        wait = POLL_S if due is None else min(POLL_S, due)
        batch = await consumer.getmany(timeout_ms=max(1, int(wait * 1000)))
        now = loop.time()
        for tp, records in batch.items():
            for record in records:
                buffer.push(view_of(record), timestamp_ms=record.timestamp, partition=tp, now=now)
            if records:
                last_record = now
        if backlog and await _caught_up(consumer, partitions, ends):
            # The backlog is all fetched: nothing older can come; print it in order now.
            backlog = False
            last_record = now  # the idle timeout counts from the end of the backlog
            ready = buffer.flush()
        else:
            ready = buffer.pop_ready(now)
        if release(ready):
            return shown
        idle = now - last_record
        if (
            options.idle_timeout is not None
            and not backlog
            and not buffer
            and idle >= options.idle_timeout
        ):
            break
    release(buffer.flush())
    return shown


async def _caught_up(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], ends: dict[TopicPartition, int]
) -> bool:
    for tp in partitions:
        if await consumer.position(tp) < ends[tp]:
            return False
    return True
