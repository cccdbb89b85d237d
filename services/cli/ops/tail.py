"""`tongban tail`: follow case topics, merged in event-time order, filtered, masked.

What is guaranteed (and said in `tongban tail --help`):
- a backlog (`--from-beginning`, `--from-time`, `--from-offset`), i.e. every record from the
  start positions up to the end offsets seen when the tail starts, is read whole and printed
  in exact event-time order (`ce_time`, ties broken by record timestamp, topic, partition,
  offset), across every topic and partition and however large (`merge.SortedBacklog`);
- records past those end offsets follow the backlog, live, through the reorder buffer: in
  order unless one arrives more than `--order-delay` seconds late (then it prints when due,
  after younger ones; so does one whose event time is older than the backlog's last). None
  is dropped.

No consumer group: the tail assigns every partition of the chosen topics itself, never
commits, and leaves no trace on the cluster. Records are put in order first and filtered
after, so that a case's facts are learnt in the order its events happened
(`services.operators.event_facts.CaseMemory`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import TopicPartition
from rich.markup import escape

from contracts.events import BUNDLE_TOPIC, CASE_TOPICS
from services.cli.ops.events import EventView, view_of
from services.cli.ops.filters import select
from services.cli.ops.kafka_io import StartAt, StartKind, make_reader, partitions_of, seek_start
from services.cli.ops.merge import DEFAULT_DELAY_S, SortedBacklog, TimeMergeBuffer
from services.common.kafka import ReadableFetch
from services.common.settings import CommonSettings
from services.operators.event_facts import CaseMemory, EventFilter
from services.policy.catalog_index import CatalogIndex

POLL_S = 0.2
YIELD_EVERY = 1000  # backlog records printed between two turns of the event loop


class TailError(RuntimeError):
    """The tail cannot start (no such topic, broker unreachable...)."""


@dataclass(frozen=True)
class TailOptions:
    topics: tuple[str, ...] = ()  # empty: every case topic of the contract (+ bundle.v1)
    include_dlq: bool = False
    start: StartAt = field(default_factory=StartAt)
    filters: EventFilter = field(default_factory=EventFilter)
    catalog: CatalogIndex | None = None  # for --district
    max_events: int | None = None
    idle_timeout: float | None = None
    order_delay: float = DEFAULT_DELAY_S

    def chosen_topics(self, dlq_topic: str) -> tuple[list[str], bool]:
        """(topics, explicit): explicitly named topics must exist; default ones may not.
        Following a bundle adds its own topic to the default ones (§8)."""
        explicit = bool(self.topics)
        topics = list(self.topics) if explicit else list(CASE_TOPICS)
        if not explicit and self.filters.bundles:
            topics.append(BUNDLE_TOPIC)
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
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Show events until `stop`, `max_events` shown or `idle_timeout` s without records;
    return how many were shown. `progress(read, total)` follows the reading of a backlog
    (`read == total` once it is read)."""
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

        def unreadable(tp: TopicPartition, offset: int, error: Exception) -> None:
            # Skipped (the Kafka client cannot parse it), and said so with its place.
            note(
                f"[yellow]unreadable record skipped:[/] {escape(tp.topic)}/{tp.partition} "
                f"offset {offset} ({escape(repr(error)[:300])})"
            )

        fetch = ReadableFetch(consumer, unreadable)
        return await _follow(fetch, ends, options, emit=emit, stop=stop, progress=progress)
    finally:
        await consumer.stop()


async def _follow(
    fetch: ReadableFetch,
    ends: dict[TopicPartition, int],
    options: TailOptions,
    *,
    emit: Callable[[EventView], None],
    stop: asyncio.Event,
    progress: Callable[[int, int], None] | None,
) -> int:
    loop = asyncio.get_running_loop()
    buffer: TimeMergeBuffer[EventView] = TimeMergeBuffer(options.order_delay)
    memory = CaseMemory()
    shown = 0

    def release(view: EventView) -> bool:
        """Filter and show; True once `max_events` are shown."""
        nonlocal shown
        if select(view, options.filters, memory=memory, catalog=options.catalog):
            emit(view)
            shown += 1
            if options.max_events is not None and shown >= options.max_events:
                return True
        return False

    if options.start.kind is not StartKind.now:
        with SortedBacklog[EventView](lambda view: view.sort_key) as backlog:
            await _read_backlog(fetch, ends, backlog, buffer, stop=stop, progress=progress)
            for count, view in enumerate(backlog.drain(), 1):
                if stop.is_set() or release(view):
                    return shown
                if count % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # let Ctrl-C (a loop signal handler) through

    last_record = loop.time()  # the idle timeout counts from the end of the backlog
    while not stop.is_set():
        due = buffer.next_due(loop.time())
        wait = POLL_S if due is None else min(POLL_S, due)
        batch = await fetch.getmany(timeout_ms=max(1, int(wait * 1000)))
        now = loop.time()
        for records in batch.values():
            for record in records:
                view = view_of(record)
                buffer.push(view, key=view.sort_key, now=now)
            if records:
                last_record = now
        if any(release(view) for view in buffer.pop_ready(now)):
            return shown
        if (
            options.idle_timeout is not None
            and not buffer
            and now - last_record >= options.idle_timeout
        ):
            break
    for view in buffer.flush():
        if release(view):
            break
    return shown


async def _read_backlog(
    fetch: ReadableFetch,
    ends: dict[TopicPartition, int],
    backlog: SortedBacklog[EventView],
    live: TimeMergeBuffer[EventView],
    *,
    stop: asyncio.Event,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Every record before the end offsets seen at the start into `backlog`; records past
    them (produced since) into the `live` buffer. A bounded read: it ends at those offsets."""
    loop = asyncio.get_running_loop()
    starts = {tp: await fetch.consumer.position(tp) for tp in ends}
    pending = {tp for tp, end in ends.items() if starts[tp] < end}
    # An upper bound (compacted topics and transaction markers leave offsets unused).
    total = sum(ends[tp] - starts[tp] for tp in pending)
    while pending and not stop.is_set():
        batch = await fetch.getmany(*pending, timeout_ms=int(POLL_S * 1000))
        now = loop.time()
        for tp, records in batch.items():
            for record in records:
                view = view_of(record)
                if record.offset < ends[tp]:
                    backlog.add(view)
                else:
                    live.push(view, key=view.sort_key, now=now)
        pending = {tp for tp in pending if await fetch.consumer.position(tp) < ends[tp]}
        if progress is not None:
            progress(len(backlog), total if pending else len(backlog))
