"""Consumer runner: batches from a consumer group, applied in one database transaction each.

The guarantees (DESIGN.md §2):
- idempotent: every processed event id is inserted into the inbox `(consumer, event_id)` in the
  same transaction as the handler's effect; a redelivered event finds its row and is skipped
  (a reader with `own_inbox` keeps that record in its own table, as intake's timeline does);
- at-least-once: offsets are committed only after that transaction commits;
- no record stalls a partition: a record that cannot be parsed (not a CloudEvent, attributes
  that are not UTF-8 or hold control characters, data that is not JSON or that PostgreSQL
  cannot store), validated (unknown type, schema-invalid) or stored (a value too long for
  its column: dead-lettered at once), or whose handler keeps failing after bounded retries,
  goes to the dead-letter topic with `dlq_reason` and `dlq_source` headers (services/common/
  dlq.py: a letter too big for the topic is truncated, never retried forever), and the
  partition moves on. Event ids of any length are stored (`inbox_key`);
- database or broker outages are not the event's fault: the batch is retried, never
  dead-lettered, until the infrastructure is back;
- per-case order: records of one partition (one case's key) are applied in offset order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.db import Driver, driver_connection, inbox_key, runtime_metadata
from services.common.dlq import DeadLetterWriter, LetterShape, unreadable_record
from services.common.envelope import Envelope, EnvelopeError
from services.common.failures import describe_error, is_data_error, is_infrastructure_error
from services.common.kafka import client_options, make_consumer, make_producer
from services.common.logs import get_logger
from services.common.metrics import (
    BATCH_SECONDS,
    CONSUMER_LAG,
    DEAD_LETTERS,
    DEAD_LETTERS_TRUNCATED,
    EVENTS_CONSUMED,
    HANDLER_RETRIES,
)
from services.common.rows import discard_deferred, flush_deferred, insert_rows
from services.common.settings import CommonSettings
from services.common.tracing import continued_span

log = get_logger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]
# A record with the envelope its group read from it (once, for every reader that takes it).
Parsed: TypeAlias = tuple[Record, Envelope]

HandlerFn = Callable[[AsyncSession, Envelope, Any], Awaitable[None]]
# Applies the fresh events of a whole batch at once, in offset order (a consumer whose
# per-event work is a few statements gains most from doing them once per batch).
# A reader's whole batch in one call. A reader with its own inbox (`own_inbox`) may answer the
# inbox keys of the events it applied, so the others count as duplicates; None: all of them.
BatchHandlerFn = Callable[
    [AsyncSession, Sequence[tuple[Envelope, Any]]], Awaitable[Collection[str] | None]
]
# Run first in a batch's transaction when the batch holds several events (the per-event
# handlers follow, in offset order): e.g. to take its rows' locks in one order.
BeforeBatchFn = Callable[[AsyncSession, Sequence[tuple[Envelope, Any]]], Awaitable[None]]
# Which of a batch's events concern a reader, known only from its own tables: one flag per
# event, in order. Read on the asyncpg connection outside any transaction (one round trip),
# from the envelopes alone: the payloads of the events passed over are never validated.
RelevantFn = Callable[[Driver, Sequence[Envelope]], Awaitable[list[bool]]]


class PermanentError(Exception):
    """The event can never be applied (e.g. a decision from the wrong department).

    Raised by a handler, it sends the event to the dead-letter topic at once, with the message
    as the reason, without retries.
    """


@dataclass(frozen=True)
class Subscription:
    """One event type a consumer applies: its payload model and its handler."""

    handler: HandlerFn
    model: type[BaseModel] | None = None


@dataclass
class _Work:
    record: ConsumerRecord[bytes, bytes]
    envelope: Envelope
    payload: Any

    @cached_property
    def key(self) -> str:
        """The event's key in the inbox."""
        return inbox_key(self.envelope.id)


@dataclass
class _DeadLetter:
    record: ConsumerRecord[bytes, bytes]
    reason: str


class _HandlerFailed(Exception):
    """Internal: a handler raised in the fast path; rerun the batch record by record."""


class ConsumerRunner:
    """One reader of the service's events: the event types it applies with their handlers,
    the name its inbox rows and dead letters go by, its own transactions and retries.

    A service's readers share one consumer group (`ConsumerGroup`, one fetch for all of them:
    issue 18); a reader can also run alone as a group of its own (`run`), as the partner
    readers do (a pattern subscription cannot share a consumer with a topic list).
    """

    def __init__(
        self,
        settings: CommonSettings,
        *,
        name: str,
        topics: Iterable[str],
        subscriptions: Mapping[str, Subscription],
        sessions: async_sessionmaker[AsyncSession],
        schema: str,
        ignored_types: Iterable[str] = (),
        group_id: str | None = None,
        dlq_producer: AIOKafkaProducer | None = None,
        batch_handler: BatchHandlerFn | None = None,
        pattern: str | None = None,
        accept: Callable[[Envelope], bool] | None = None,
        starts_when: Callable[[], Awaitable[None]] | None = None,
        relevant: RelevantFn | None = None,
        own_inbox: bool = False,
        before_batch: BeforeBatchFn | None = None,
    ) -> None:
        if own_inbox and batch_handler is None:
            raise ValueError("a reader with its own inbox takes its batches whole")
        self.settings = settings
        self.name = name
        self.topics = list(topics)
        # A pattern subscription (instead of `topics`): the partner regions' mirrored topics
        # (DESIGN.md §9), which appear when a partner is linked; `accept` then picks the
        # records meant for this region, and the others are passed over without a letter.
        self.pattern = pattern
        self.accept = accept
        self.starts_when = starts_when  # awaited before the group is joined
        # A reader that acts on few of its records, and knows which only from its tables:
        # the others are passed over with no inbox row (nothing was applied, so a copy of
        # one has nothing to be kept from doing twice).
        self.relevant = relevant
        # A reader whose handlers keep their own record of the events they applied, keyed
        # by the event's inbox key, in the same transaction (intake's timeline: an entry per
        # event), and apply each once: no inbox row, one statement less a batch.
        self.own_inbox = own_inbox
        self.subscriptions = dict(subscriptions)
        self.ignored_types = frozenset(ignored_types)
        self.sessions = sessions
        self.group_id = group_id or name
        self._inbox = runtime_metadata(schema)[2]
        self.batch_handler = batch_handler
        self.before_batch = before_batch
        self._dlq_producer = dlq_producer
        # Set with the group this reader runs in (`ConsumerGroup.stop`, `_set_ready`).
        self._stop = asyncio.Event()
        self._batch_lock = asyncio.Lock()  # one batch of this reader at a time
        self.ready = asyncio.Event()
        self._group: ConsumerGroup | None = None

    def stop(self) -> None:
        self._stop.set()
        if self._group is not None:
            self._group.stop()

    @property
    def _consumer(self) -> AIOKafkaConsumer | None:
        """The Kafka consumer of the group this reader runs in (None before it starts)."""
        return self._group.consumer if self._group is not None else None

    def knows(self, event_type: str) -> bool:
        """A type this reader applies or passes over; any other is unknown to it."""
        return event_type in self.subscriptions or event_type in self.ignored_types

    def own_group(self) -> ConsumerGroup:
        """This reader as a consumer group of its own (`group_id`, its pattern and start
        condition), made once."""
        if self._group is None:
            return ConsumerGroup(
                self.settings,
                group_id=self.group_id,
                readers=[self],
                pattern=self.pattern,
                starts_when=self.starts_when,
                dlq_producer=self._dlq_producer,
            )
        return self._group

    async def run(self) -> None:
        """Run as a consumer group of its own."""
        await self.own_group().run()

    async def apply(self, records: list[Parsed]) -> list[_DeadLetter] | None:
        """Apply this reader's share of a fetch, each record with the envelope the group read
        from it (whole, or record by record when one fails); the letters to send, or None when
        stopping during an outage (nothing committed)."""
        async with self._batch_lock:
            started = time.perf_counter()
            dead = await self._apply_with_infra_retries(records)
            BATCH_SECONDS.labels(self.settings.service, self.name).observe(
                time.perf_counter() - started
            )
            return dead

    async def _apply_with_infra_retries(self, records: list[Parsed]) -> list[_DeadLetter] | None:
        backoff = self.settings.consumer_retry_backoff_s or 0.1
        while True:
            try:
                return await self._apply(records)
            except Exception as exc:
                if not is_infrastructure_error(exc):
                    raise
                log.warning(
                    "database unavailable; retrying batch",
                    consumer=self.name,
                    error=describe_error(exc),  # no statement parameters: personal data
                    retry_in_s=backoff,
                )
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=backoff)
                    return None
                except TimeoutError:
                    backoff = min(backoff * 2, self.settings.consumer_retry_backoff_max_s)

    # -- applying a batch ----------------------------------------------------------------------

    def _takes(self, envelope: Envelope) -> bool:
        """Whether this reader applies the record, from its envelope: its type, and `accept`."""
        # Not this reader's type: another reader of the topic applies it (a type no reader
        # knows is dead-lettered by the group before it reaches a reader).
        if envelope.type not in self.subscriptions:
            return False
        # Another region's record (§9), a case not this reader's business: passed over.
        return self.accept is None or self.accept(envelope)

    def _parse(self, record: Record, envelope: Envelope) -> _Work | _DeadLetter:
        try:
            return self._validate(record, envelope)
        except Exception as exc:  # whatever a record holds, it must not stop the partition
            return _DeadLetter(record, f"unreadable: {describe_error(exc)}")

    def _validate(self, record: Record, envelope: Envelope) -> _Work | _DeadLetter:
        subscription = self.subscriptions[envelope.type]
        payload: Any = envelope.data
        if subscription.model is not None:
            try:
                payload = subscription.model.model_validate(envelope.data)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
                    for err in exc.errors()
                )
                return _DeadLetter(record, f"schema-invalid {envelope.type}: {problems}")
        return _Work(record, envelope, payload)

    async def _apply(self, records: list[Parsed]) -> list[_DeadLetter]:
        taken: list[Parsed] = []
        dead: list[_DeadLetter] = []
        for record, envelope in records:
            try:
                takes = self._takes(envelope)
            except Exception as exc:  # whatever a record holds, it must not stop the partition
                dead.append(_DeadLetter(record, f"unreadable: {describe_error(exc)}"))
                continue
            if takes:
                taken.append((record, envelope))
            else:
                self._count(record, "ignored")
        if taken and self.relevant is not None:
            taken = await self._relevant(taken)
        work: list[_Work] = []
        for record, envelope in taken:
            parsed = self._parse(record, envelope)
            if isinstance(parsed, _Work):
                work.append(parsed)
            else:
                dead.append(parsed)
        if not work:
            return dead
        try:
            await self._apply_fast(work)
        except _HandlerFailed:
            dead.extend(await self._apply_one_by_one(work))
        return dead

    async def _apply_fast(self, work: list[_Work]) -> None:
        """The whole batch in one transaction with one inbox statement: the common case."""
        async with self.sessions() as session, session.begin():
            try:
                firsts = _first_of_each(work)
                fresh = (
                    {item.key for item in firsts}
                    if self.own_inbox
                    else await self._inbox_insert(session, firsts)
                )
            except Exception as exc:
                if is_infrastructure_error(exc):
                    raise
                raise _HandlerFailed() from exc  # one record's row cannot be stored: isolate it
            applied: set[str] = set()
            todo: list[_Work] = []
            for item in work:
                key = item.key
                if key not in fresh or key in applied:
                    self._count(item.record, "duplicate")
                    continue
                applied.add(key)
                todo.append(item)
            try:
                if self.before_batch is not None and len(todo) > 1:
                    await self.before_batch(session, [(i.envelope, i.payload) for i in todo])
                if self.batch_handler is not None:
                    done = await self.batch_handler(
                        session, [(i.envelope, i.payload) for i in todo]
                    )
                    if self.own_inbox and done is not None:
                        applied &= set(done)  # the others were applied before
                else:
                    for item in todo:
                        await self._call(session, item)
                await flush_deferred(session)
            except Exception as exc:
                if is_infrastructure_error(exc):
                    raise
                raise _HandlerFailed() from exc
        for item in todo:
            self._count(item.record, "processed" if item.key in applied else "duplicate")

    async def _apply_one_by_one(self, work: list[_Work]) -> list[_DeadLetter]:
        """Isolate the failing records: one savepoint per event, bounded retries each."""
        dead: list[_DeadLetter] = []
        attempts = self.settings.consumer_handler_attempts
        async with self.sessions() as session, session.begin():
            for item in work:
                for attempt in range(1, attempts + 1):
                    try:
                        try:
                            async with session.begin_nested():
                                if not self.own_inbox and not await self._inbox_insert(
                                    session, [item]
                                ):
                                    self._count(item.record, "duplicate")
                                    break
                                applied = await self._call(session, item)
                                # This event's outbox rows belong to its savepoint.
                                await flush_deferred(session)
                        except BaseException:
                            discard_deferred(session)  # rolled back with the savepoint
                            raise
                        self._count(item.record, "processed" if applied else "duplicate")
                        break
                    except PermanentError as exc:
                        dead.append(_DeadLetter(item.record, f"rejected: {exc}"))
                        break
                    except Exception as exc:
                        if is_infrastructure_error(exc):
                            raise
                        if is_data_error(exc):
                            # PostgreSQL refuses the values themselves (too long for a
                            # column, out of range): they fail the same way every time.
                            dead.append(
                                _DeadLetter(item.record, f"unstorable: {describe_error(exc)}")
                            )
                            break
                        if attempt == attempts:
                            dead.append(
                                _DeadLetter(
                                    item.record,
                                    f"handler failed after {attempts} attempts: "
                                    f"{describe_error(exc)}",
                                )
                            )
                            break
                        HANDLER_RETRIES.labels(self.settings.service, self.name).inc()
                        log.warning(
                            "handler failed; retrying",
                            consumer=self.name,
                            event_id=item.envelope.id[:100],
                            attempt=attempt,
                            error=describe_error(exc),
                        )
                        await asyncio.sleep(
                            min(
                                self.settings.consumer_retry_backoff_s * 2 ** (attempt - 1),
                                self.settings.consumer_retry_backoff_max_s,
                            )
                        )
        return dead

    async def _call(self, session: AsyncSession, item: _Work) -> bool:
        """Apply one event; False when a reader with its own inbox had applied it before (its
        batch handler, which is what dedupes there, takes it as a batch of one)."""
        subscription = self.subscriptions[item.envelope.type]
        envelope = item.envelope
        with continued_span(
            f"apply {envelope.type}",
            envelope.traceparent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": item.record.topic,
                "messaging.consumer.group.name": self.group_id,
                "messaging.message.id": envelope.id,
                "tongban.case_id": envelope.subject,
            },
        ):
            if self.own_inbox and self.batch_handler is not None:
                done = await self.batch_handler(session, [(envelope, item.payload)])
                return done is None or item.key in done
            await subscription.handler(session, envelope, item.payload)
            return True

    async def _relevant(self, taken: list[Parsed]) -> list[Parsed]:
        """The events that concern this reader; the others pass with no transaction at all,
        and unvalidated (a malformed one is the business of the readers that apply it).
        A case that becomes one of them after this read is one whose earlier events the
        reader would have passed over inside a transaction too (read committed)."""
        assert self.relevant is not None
        async with self.sessions() as session:
            driver = await driver_connection(session, transaction=False)
            flags = await self.relevant(driver, [envelope for _record, envelope in taken])
        for (record, _envelope), flag in zip(taken, flags, strict=True):
            if not flag:
                self._count(record, "ignored")
        return [parsed for parsed, flag in zip(taken, flags, strict=True) if flag]

    async def _inbox_insert(self, session: AsyncSession, work: list[_Work]) -> set[str]:
        """Insert the inbox rows of `work` (distinct keys); the keys that were not there yet.
        One prepared statement for any batch size, on the session's asyncpg connection."""
        rows = [
            {"consumer": self.name, "event_id": item.key, "topic": item.record.topic}
            for item in work
        ]
        inserted = await insert_rows(
            session, self._inbox, rows, on_conflict_do_nothing=True, returning="event_id"
        )
        return set(inserted)

    def _count(self, record: ConsumerRecord[bytes, bytes], outcome: str) -> None:
        EVENTS_CONSUMED.labels(self.settings.service, self.name, record.topic, outcome).inc()


class ConsumerGroup:
    """One Kafka consumer for several readers (a service's whole group, DESIGN.md §2).

    Each fetch is shared out by topic: every reader of a record's topic gets it, and applies
    its share in its own transaction, concurrently with the other readers. A partition whose
    records are in hand is paused until every reader holding them is done, so records of one
    partition (one case) are applied in offset order, and a reader that waits (a decision that
    overtook its case retries) holds only the partitions of its share while the others go on.
    A partition's offset moves when all its readers have applied (or dead-lettered) its
    records. A record no reader can read (not a CloudEvent, a type no reader knows, bytes the
    Kafka client cannot parse) is dead-lettered once, as the group's (`dlq_source`
    `<service>/<group>`); what a reader refuses is dead-lettered as that reader's.
    """

    def __init__(
        self,
        settings: CommonSettings,
        *,
        group_id: str,
        readers: Sequence[ConsumerRunner],
        pattern: str | None = None,
        starts_when: Callable[[], Awaitable[None]] | None = None,
        dlq_producer: AIOKafkaProducer | None = None,
        seed_from: Sequence[str] = (),
    ) -> None:
        if not readers:
            raise ValueError("a consumer group needs a reader")
        self.settings = settings
        self.group_id = group_id
        self.readers = list(readers)
        self.pattern = pattern
        self.starts_when = starts_when
        # Groups whose committed offsets this one starts from when it has none of its own
        # (the readers' former groups of one each: no replay after the upgrade).
        self.seed_from = list(seed_from)
        self.topics = sorted({t for r in self.readers for t in r.topics})
        self._dlq_producer = dlq_producer
        self._own_dlq_producer = dlq_producer is None
        self._letters: DeadLetterWriter | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()
        for reader in self.readers:
            if reader._group is not None:
                raise ValueError(f"{reader.name} is in group {reader._group.group_id} already")
            reader._group = self
        self._by_topic: dict[str, list[ConsumerRunner]] = {}
        # Batches being applied, each with its number of records; the partitions paused until
        # their readers are done.
        self._in_flight: dict[asyncio.Task[None], int] = {}
        self._held: set[TopicPartition] = set()
        # At `consumer_max_records_in_flight` the group fetches no more until batches finish:
        # each reader applies one batch at a time, so what a consumer behind its topics fetched
        # beyond that only waited in memory. Batches that hold the group for long (an outage)
        # get every partition paused, so it can poll (and stay in the group) without fetching.
        self._all_paused = False
        self._waiting_since: float | None = None
        # Offsets of applied records not yet committed to Kafka, and when we last committed.
        self._uncommitted: dict[TopicPartition, int] = {}
        # The next offset of each partition after the last records this group handled (since
        # the partition was assigned): where to restart after an unreadable record.
        self._handled_to: dict[TopicPartition, int] = {}
        self._committed_at = 0.0
        self._failed: BaseException | None = None  # a batch that raised: the group restarts

    def stop(self) -> None:
        self._stop.set()
        for reader in self.readers:
            reader._stop.set()  # cuts short a reader waiting out an outage

    def _set_ready(self) -> None:
        self.ready.set()
        for reader in self.readers:
            reader.ready.set()

    def _readers_of(self, topic: str) -> list[ConsumerRunner]:
        readers = self._by_topic.get(topic)
        if readers is None:
            # A pattern group's topics are not known in advance: all its readers read them.
            readers = [r for r in self.readers if topic in r.topics or r.pattern is not None]
            self._by_topic[topic] = readers
        return readers

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        if any(r._stop.is_set() for r in self.readers):
            self._stop.set()  # a reader stopped before its group ran
        if self.starts_when is not None:
            self._set_ready()  # waiting for its condition is not a fault: the service is ready
            await self.starts_when()
        self._failed = None
        if self.seed_from:
            await self._seed_offsets()
        consumer = make_consumer(
            self.settings,
            group_id=self.group_id,
            client_id=f"{self.settings.service}-{self.group_id}",
        )
        if self.pattern is not None:
            consumer.subscribe(pattern=self.pattern, listener=_FinishBatchOnRevoke(self))
        else:
            consumer.subscribe(self.topics, listener=_FinishBatchOnRevoke(self))
        self.consumer = consumer
        await consumer.start()
        if self._dlq_producer is None:
            self._dlq_producer = make_producer(self.settings, client_id=f"{self.group_id}-dlq")
            await self._dlq_producer.start()
        self._letters = DeadLetterWriter(
            self._dlq_producer,
            topic=self.settings.dlq_topic,
            max_bytes=self.settings.dlq_max_record_bytes,
            retry_backoff_max_s=self.settings.consumer_retry_backoff_max_s,
        )
        self._committed_at = time.monotonic()
        self._set_ready()
        log.info(
            "consumer started",
            consumer=self.group_id,
            readers=[r.name for r in self.readers],
            topics=self.pattern or self.topics,
        )
        try:
            while not self._stop.is_set() and self._failed is None:
                if sum(self._in_flight.values()) >= self.settings.consumer_max_records_in_flight:
                    await self._wait_for_room(consumer)
                    await self._commit_if_due(consumer)
                    continue
                self._waiting_since = None
                if self._all_paused:
                    self._all_paused = False
                    consumer.resume(*(consumer.assignment() - self._held))
                batch = await self._fetch(consumer, self.settings.consumer_poll_ms)
                if batch and self.settings.consumer_linger_ms:
                    batch = await self._linger(consumer, batch)
                if batch:
                    self._start_batch(consumer, batch)
                await self._commit_if_due(consumer)
            if self._failed is not None:
                raise RuntimeError(f"{self.group_id}: a batch failed") from self._failed
        finally:
            # Graceful: the batches in hand finish (or give up at once if the database is
            # away); commit their offsets, leave the group.
            await self._settle()
            await self._commit_or_log(consumer, None, when="at stop")
            await consumer.stop()
            if self._own_dlq_producer and self._dlq_producer is not None:
                await self._dlq_producer.stop()
            log.info("consumer stopped", consumer=self.group_id)

    async def _fetch(
        self, consumer: AIOKafkaConsumer, timeout_ms: int, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record]] | None:
        try:
            batch: dict[TopicPartition, list[Record]] = await consumer.getmany(
                timeout_ms=timeout_ms,
                max_records=max_records or self.settings.consumer_max_records,
            )
            return batch
        except Exception as exc:
            if isinstance(exc, KafkaError):
                raise
            await self._pass_unreadable(consumer, exc)
            return None

    async def _linger(
        self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[Record]]
    ) -> dict[TopicPartition, list[Record]]:
        """`consumer_linger_ms` after a fetch, whatever else has arrived joins the batch, so
        each reader's transaction takes several events instead of one each (only where a
        moment's delay is harmless: intake's view of its cases)."""
        taken = sum(len(records) for records in batch.values())
        room = self.settings.consumer_max_records - taken
        if room <= 0:
            return batch
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self.settings.consumer_linger_ms / 1000)
        more = await self._fetch(consumer, 0, room)
        for tp, records in (more or {}).items():
            batch[tp] = batch.get(tp, []) + records  # the same partition's later records
        return batch

    async def _settle(self) -> None:
        """Wait for every batch in hand."""
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _wait_for_room(self, consumer: AIOKafkaConsumer) -> None:
        """The records in hand are at the limit: wait for a batch to finish, up to a poll.
        Held for long (`_ROOM_WAIT_BEFORE_POLL_S`), pause every partition and poll without
        fetching: Kafka drops a member that has not polled for max.poll.interval (5 minutes),
        and the loop resumes them once there is room. Not sooner: pausing drops what the
        client had fetched ahead, which is then fetched again."""
        done, _ = await asyncio.wait(
            self._in_flight,
            timeout=self.settings.consumer_poll_ms / 1000,
            return_when=asyncio.FIRST_COMPLETED,
        )
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        if not done and now - self._waiting_since >= _ROOM_WAIT_BEFORE_POLL_S:
            if not self._all_paused:
                self._all_paused = True
                consumer.pause(*consumer.assignment())
            # Nothing comes of the paused partitions; partitions assigned meanwhile are not
            # paused, and what they bring is applied like any fetch (never dropped: the
            # position has moved past it).
            batch = await self._fetch(consumer, 0)
            if batch:
                self._start_batch(consumer, batch)

    def _start_batch(
        self,
        consumer: AIOKafkaConsumer,
        batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    ) -> None:
        assigned = consumer.assignment()
        # A revoke may have slipped in between the fetch and here: those partitions are
        # someone else's now; they will read them again and the inbox dedupes.
        batch = {tp: recs for tp, recs in batch.items() if tp in assigned and recs}
        if not batch:
            return
        consumer.pause(*batch)  # nothing more of these partitions until this batch is done
        self._held.update(batch)
        task = asyncio.create_task(self._apply_batch(consumer, batch))
        self._in_flight[task] = sum(len(recs) for recs in batch.values())
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            # Not an outage (those are retried) nor a record's fault (dead-lettered): a bug.
            # Stop, so the supervisor restarts the group from the committed offsets.
            log.error("batch failed", consumer=self.group_id, error=repr(task.exception()))
            self._failed = task.exception()

    async def _apply_batch(
        self,
        consumer: AIOKafkaConsumer,
        batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    ) -> None:
        records = [r for recs in batch.values() for r in recs]
        letters, shares = self._share_out(records)
        held = {reader: _partitions(r for r, _ in share) for reader, share in shares.items()}
        holders = dict.fromkeys(batch, 0)
        for partitions in held.values():
            for tp in partitions:
                holders[tp] += 1
        # A partition's letters go out together, in offset order, once all its readers are
        # done; then its offset moves.
        letters_of: dict[TopicPartition, list[tuple[_DeadLetter, ConsumerRunner | None]]] = {}
        for letter in letters:
            letters_of.setdefault(_partition(letter.record), []).append((letter, None))

        async def finish(partitions: Iterable[TopicPartition]) -> bool:
            for tp in partitions:
                in_order = sorted(letters_of.pop(tp, []), key=lambda x: x[0].record.offset)
                for letter, reader in in_order:
                    if not await self._dead_letter(
                        letter, reader.name if reader else self.group_id
                    ):
                        return False  # stopping while the broker is away: not past them
                    for counted in [reader] if reader else self._readers_of(tp.topic):
                        counted._count(letter.record, "dead_lettered")
                self._done(consumer, batch, [tp])
            return True

        if not await finish([tp for tp, n in holders.items() if n == 0]):
            return

        async def apply_share(reader: ConsumerRunner, share: list[Parsed]) -> None:
            dead = await reader.apply(share)
            if dead is None:
                return  # stopping during an outage: leave offsets, the next owner redoes it
            for letter in dead:
                letters_of.setdefault(_partition(letter.record), []).append((letter, reader))
            finished = []
            for tp in held[reader]:
                holders[tp] -= 1
                if holders[tp] == 0:
                    finished.append(tp)
            await finish(finished)

        # Every share runs to its end before a failure is raised: none is left running alone.
        outcomes = await asyncio.gather(
            *(apply_share(r, share) for r, share in shares.items()), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    def _share_out(
        self, records: list[Record]
    ) -> tuple[list[_DeadLetter], dict[ConsumerRunner, list[Parsed]]]:
        """The group's own letters (records no reader can read), and each reader's share: a
        record is parsed once, whatever number of readers take it."""
        letters: list[_DeadLetter] = []
        shares: dict[ConsumerRunner, list[Parsed]] = {}
        for record in records:
            readers = self._readers_of(record.topic)
            try:
                envelope = Envelope.from_record(
                    record.key, record.value, list(record.headers or ())
                )
            except EnvelopeError as exc:
                letters.append(_DeadLetter(record, f"malformed: {exc}"))
                continue
            except Exception as exc:  # whatever a record holds, it must not stop the partition
                letters.append(_DeadLetter(record, f"unreadable: {describe_error(exc)}"))
                continue
            if not any(r.knows(envelope.type) for r in readers):
                letters.append(
                    _DeadLetter(
                        record, f"unknown event type {envelope.type[:200]!r} on {record.topic}"
                    )
                )
                continue
            for reader in readers:
                shares.setdefault(reader, []).append((record, envelope))
        return letters, shares

    def _done(
        self,
        consumer: AIOKafkaConsumer,
        batch: dict[TopicPartition, list[Record]],
        partitions: Iterable[TopicPartition],
    ) -> None:
        """Every reader has applied these partitions' records: move their offsets on and
        fetch them again."""
        offsets = {tp: batch[tp][-1].offset + 1 for tp in partitions}
        if not offsets:
            return
        self._handled_to.update(offsets)
        self._uncommitted.update(offsets)
        assigned = consumer.assignment()
        for tp, next_offset in offsets.items():
            highwater = consumer.highwater(tp) if tp in assigned else None
            if highwater is not None:
                CONSUMER_LAG.labels(
                    self.settings.service, self.group_id, tp.topic, str(tp.partition)
                ).set(max(0, highwater - next_offset))
        self._held.difference_update(offsets)
        # A partition moved to another member meanwhile is not ours to resume; nor one the
        # group paused while it waited for room (the loop resumes those).
        if not self._all_paused:
            consumer.resume(*(tp for tp in offsets if tp in assigned))

    # -- offsets when the group is new ---------------------------------------------------------

    async def _seed_offsets(self) -> None:
        """A group with no offsets yet starts where the groups it replaces stand: for each
        partition, the least offset committed by the former groups of the readers of its
        topic (all of them must have one; else the partition starts from the beginning, the
        inbox skipping what was applied). Nothing is committed if the group has offsets."""
        admin = AIOKafkaAdminClient(**client_options(self.settings))
        await admin.start()
        try:
            if await admin.list_consumer_group_offsets(self.group_id):
                return
            former = {g: await admin.list_consumer_group_offsets(g) for g in self.seed_from}
        finally:
            await admin.close()
        seeds = seed_offsets(
            {r.group_id: r.topics for r in self.readers if r.group_id in former},
            {g: {tp: meta.offset for tp, meta in o.items()} for g, o in former.items()},
        )
        if not seeds:
            return
        # A consumer of the group that is no member of it (manual assignment) may commit
        # while the group is empty; if a replica joined first, its offsets stand.
        seeder = make_consumer(self.settings, group_id=self.group_id)
        await seeder.start()
        try:
            seeder.assign(list(seeds))
            await seeder.commit(seeds)
            log.info(
                "offsets seeded from former groups", consumer=self.group_id, partitions=len(seeds)
            )
        except KafkaError as exc:
            log.info("offsets not seeded", consumer=self.group_id, error=repr(exc))
        finally:
            await seeder.stop()

    # -- records the Kafka client cannot read ----------------------------------------------------

    async def _pass_unreadable(self, consumer: AIOKafkaConsumer, error: Exception) -> None:
        """A fetched record the client library cannot even parse (e.g. a header name that is
        not UTF-8, which no Java client writes but a raw producer can) makes `getmany` raise
        for every partition, again at every call. Worse, the client then drops the records it
        had already taken from other partitions in that call and moves their positions past
        them. So: let the batches in hand finish, rewind every assigned partition to where
        this group really is, then read them one at a time; the partition that fails has its
        unreadable record at its position: dead-letter it by reference (topic, partition,
        offset: there are no bytes to copy) and step over it. Every other record is applied
        as usual."""
        log.warning("a fetched record cannot be read", consumer=self.group_id, error=repr(error))
        await self._settle()
        # A partition that moves meanwhile is its next owner's (IllegalStateError on seek): it
        # rewinds from the committed offsets.
        try:
            for tp in consumer.assignment():
                consumer.seek(tp, await self._handled_position(consumer, tp))
            for tp in sorted(consumer.assignment()):
                while not self._stop.is_set():
                    at = await self._handled_position(consumer, tp)
                    try:
                        records = await consumer.getmany(
                            tp,
                            timeout_ms=self.settings.consumer_poll_ms,
                            max_records=self.settings.consumer_max_records,
                        )
                    except Exception as exc:
                        if isinstance(exc, KafkaError):
                            raise
                        await self._skip_unreadable(consumer, tp, at, exc)
                        continue
                    if not records.get(tp):
                        break  # read up to what the broker has: back to the normal loop
                    await self._apply_batch(consumer, records)
        except IllegalStateError as exc:
            log.info("partitions moved while passing an unreadable record", error=repr(exc))

    async def _handled_position(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> int:
        if tp in self._handled_to:
            return self._handled_to[tp]
        committed = await consumer.committed(tp)
        if committed is not None:
            return int(committed)
        return int((await consumer.beginning_offsets([tp]))[tp])

    async def _skip_unreadable(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, error: Exception
    ) -> None:
        """The record at `offset` cannot be read: find it exactly (the records before it in the
        fetch are readable: apply them one by one), dead-letter it, move past it."""
        consumer.seek(tp, offset)
        while True:
            try:
                records = await consumer.getmany(tp, timeout_ms=1000, max_records=1)
            except Exception as exc:
                if isinstance(exc, KafkaError):
                    raise
                error = exc
                break
            if not records.get(tp) or self._stop.is_set():
                return  # the record is gone (retention) or not fetched: the loop goes on
            await self._apply_batch(consumer, records)
            offset = self._handled_to.get(tp, offset)
        unreadable = unreadable_record(tp.topic, tp.partition, offset)
        reason = f"unreadable: the Kafka client cannot parse the record ({error!r})"
        if not await self._dead_letter(_DeadLetter(unreadable, reason[:2000]), self.group_id):
            return  # stopping while the broker is away: not past it
        consumer.seek(tp, offset + 1)
        self._handled_to[tp] = offset + 1
        self._uncommitted[tp] = offset + 1

    # -- offsets -------------------------------------------------------------------------------

    async def _commit_if_due(self, consumer: AIOKafkaConsumer) -> None:
        interval_s = self.settings.consumer_commit_interval_ms / 1000
        if self._uncommitted and time.monotonic() - self._committed_at >= interval_s:
            await self._commit_offsets(consumer)

    def forget_positions(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._handled_to.pop(tp, None)
            self._held.discard(tp)  # assigned afresh: not paused (batches finish before revoke)

    async def finish_before_revoke(self, revoked: Iterable[TopicPartition]) -> None:
        """Before partitions move: let the batches in hand finish, then commit the offsets of
        the moving partitions, so their next owner starts where this one ended."""
        await self._settle()
        if self.consumer is not None:
            await self._commit_or_log(self.consumer, revoked, when="before rebalance")

    async def _commit_or_log(
        self,
        consumer: AIOKafkaConsumer,
        only: Iterable[TopicPartition] | None,
        *,
        when: str,
    ) -> None:
        try:
            await self._commit_offsets(consumer, only)
        except Exception as exc:  # the broker may be gone: the inbox covers a redelivery
            log.warning("offset commit failed", when=when, consumer=self.group_id, error=repr(exc))

    async def _commit_offsets(
        self, consumer: AIOKafkaConsumer, only: Iterable[TopicPartition] | None = None
    ) -> None:
        """Commit the offsets of applied records (of the partitions `only`, if given)."""
        wanted = set(only) if only is not None else None
        offsets = {tp: o for tp, o in self._uncommitted.items() if wanted is None or tp in wanted}
        if not offsets:
            return
        for tp in offsets:
            del self._uncommitted[tp]
        self._committed_at = time.monotonic()
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # Lost the partitions in a rebalance: effects are committed in the database, so
            # the new owner's redelivery is a no-op through the inbox.
            log.warning(
                "offset commit failed after rebalance", consumer=self.group_id, error=str(exc)
            )

    # -- dead letters --------------------------------------------------------------------------

    async def _dead_letter(self, letter: _DeadLetter, source: str) -> bool:
        """Store the letter as `source`'s (a reader, or the group); False if the group stops
        while the broker is away."""
        record = letter.record
        assert self._letters is not None
        log.warning(
            "dead-lettered",
            consumer=source,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=letter.reason[:500],
        )
        shape = await self._letters.write(
            record, letter.reason, f"{self.settings.service}/{source}", stop=self._stop
        )
        if shape is None:
            return False
        if shape is not LetterShape.WHOLE:
            DEAD_LETTERS_TRUNCATED.labels(self.settings.service, source, record.topic).inc()
        DEAD_LETTERS.labels(self.settings.service, source, record.topic).inc()
        return True


# How long a group at its limit of records in hand waits before it polls with every partition
# paused: well inside Kafka's max.poll.interval.ms (aiokafka's default, 300 s).
_ROOM_WAIT_BEFORE_POLL_S = 30.0


def seed_offsets(
    topics_of: Mapping[str, Sequence[str]], committed: Mapping[str, Mapping[TopicPartition, int]]
) -> dict[TopicPartition, int]:
    """Where a new group over several former groups starts: for each partition of a topic,
    the least offset the former groups reading that topic committed, when every one of them
    committed one (`topics_of`: former group -> its topics; `committed`: former group ->
    its offsets). A partition some former reader never committed is left out: it starts
    from the beginning, so nothing is skipped."""
    seeds: dict[TopicPartition, int] = {}
    partitions = {tp for offsets in committed.values() for tp in offsets}
    for tp in partitions:
        groups = [g for g, topics in topics_of.items() if tp.topic in topics]
        offsets = [committed.get(g, {}).get(tp) for g in groups]
        if groups and all(o is not None and o >= 0 for o in offsets):
            seeds[tp] = min(o for o in offsets if o is not None)
    return seeds


def _partition(record: Record) -> TopicPartition:
    return TopicPartition(record.topic, record.partition)


def _partitions(records: Iterable[Record]) -> set[TopicPartition]:
    return {_partition(r) for r in records}


def _first_of_each(work: list[_Work]) -> list[_Work]:
    seen: set[str] = set()
    out = []
    for item in work:
        if item.key not in seen:
            seen.add(item.key)
            out.append(item)
    return out


class _FinishBatchOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions move, the group finishes its batches and commits their offsets (and
    any offsets of earlier batches not committed yet)."""

    def __init__(self, group: ConsumerGroup) -> None:
        self._group = group

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._group.finish_before_revoke(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        # Where this group was in a partition it held before may be stale now.
        self._group.forget_positions(assigned)
