"""Consumer runner: batches from a consumer group, applied in one database transaction each.

The guarantees (DESIGN.md §2):
- idempotent: every processed event id is inserted into the inbox `(consumer, event_id)` in the
  same transaction as the handler's effect; a redelivered event finds its row and is skipped;
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
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.db import Driver, driver_connection, inbox_key
from services.common.dlq import DeadLetterWriter, LetterShape, unreadable_record
from services.common.envelope import Envelope, EnvelopeError, RecentRecords
from services.common.failures import describe_error, is_data_error, is_infrastructure_error
from services.common.kafka import make_consumer, make_producer
from services.common.logs import get_logger
from services.common.metrics import (
    BATCH_SECONDS,
    CONSUMER_LAG,
    DEAD_LETTERS,
    DEAD_LETTERS_TRUNCATED,
    EVENTS_CONSUMED,
    HANDLER_RETRIES,
)
from services.common.outbox import discard_pending, flush_pending
from services.common.settings import CommonSettings
from services.common.tracing import continued_span

log = get_logger(__name__)

HandlerFn = Callable[[AsyncSession, Envelope, Any], Awaitable[None]]
# Applies the fresh events of a whole batch at once, in offset order (a consumer whose
# per-event work is a few statements gains most from doing them once per batch).
BatchHandlerFn = Callable[[AsyncSession, Sequence[tuple[Envelope, Any]]], Awaitable[None]]
# Which of a batch's events concern a reader, known only from its own tables: one flag per
# event, in order. Read on the asyncpg connection outside any transaction (one round trip).
RelevantFn = Callable[[Driver, Sequence[tuple[Envelope, Any]]], Awaitable[list[bool]]]


# This process's recently parsed records, shared by its consumer groups (one parse a record).
RECENT_RECORDS = RecentRecords()


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
    ) -> None:
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
        self.subscriptions = dict(subscriptions)
        self.ignored_types = frozenset(ignored_types)
        self.sessions = sessions
        self.group_id = group_id or name
        self._inbox_sql = (
            f'INSERT INTO "{schema}".inbox (consumer, event_id, topic) '
            "SELECT $1, e, t FROM unnest($2::text[], $3::text[]) AS r(e, t) "
            "ON CONFLICT DO NOTHING RETURNING event_id"
        )
        self.batch_handler = batch_handler
        self._dlq_producer = dlq_producer
        self._own_dlq_producer = dlq_producer is None
        self._letters: DeadLetterWriter | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._stop = asyncio.Event()
        self._batch_lock = asyncio.Lock()
        # Offsets of applied batches not yet committed to Kafka, and when we last committed.
        self._uncommitted: dict[TopicPartition, int] = {}
        # The next offset of each partition after the last batch this runner handled (since
        # the partition was assigned): where to restart after an unreadable record.
        self._handled_to: dict[TopicPartition, int] = {}
        self._committed_at = 0.0
        self.ready = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        if self.starts_when is not None:
            self.ready.set()  # waiting for its condition is not a fault: the service is ready
            await self.starts_when()
        consumer = make_consumer(
            self.settings, group_id=self.group_id, client_id=f"{self.settings.service}-{self.name}"
        )
        if self.pattern is not None:
            consumer.subscribe(pattern=self.pattern, listener=_FinishBatchOnRevoke(self))
        else:
            consumer.subscribe(self.topics, listener=_FinishBatchOnRevoke(self))
        self._consumer = consumer
        await consumer.start()
        if self._dlq_producer is None:
            self._dlq_producer = make_producer(self.settings, client_id=f"{self.name}-dlq")
            await self._dlq_producer.start()
        self._letters = DeadLetterWriter(
            self._dlq_producer,
            topic=self.settings.dlq_topic,
            max_bytes=self.settings.dlq_max_record_bytes,
            retry_backoff_max_s=self.settings.consumer_retry_backoff_max_s,
        )
        self._committed_at = time.monotonic()
        self.ready.set()
        log.info("consumer started", consumer=self.name, topics=self.pattern or self.topics)
        try:
            while not self._stop.is_set():
                try:
                    batch = await consumer.getmany(
                        timeout_ms=self.settings.consumer_poll_ms,
                        max_records=self.settings.consumer_max_records,
                    )
                except Exception as exc:
                    if isinstance(exc, KafkaError):
                        raise
                    await self._pass_unreadable(consumer, exc)
                    continue
                if batch:
                    async with self._batch_lock:
                        await self._handle_batch(consumer, batch)
                else:
                    await self._commit_if_due(consumer)
        finally:
            # Graceful: the batch in hand finished above; commit its offsets, leave the group.
            await self._commit_or_log(consumer, None, when="at stop")
            await consumer.stop()
            if self._own_dlq_producer and self._dlq_producer is not None:
                await self._dlq_producer.stop()
            log.info("consumer stopped", consumer=self.name)

    async def _handle_batch(
        self,
        consumer: AIOKafkaConsumer,
        batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    ) -> None:
        assigned = consumer.assignment()
        # A revoke may have slipped in between the fetch and the lock: those partitions are
        # someone else's now; they will read them again and the inbox dedupes.
        batch = {tp: recs for tp, recs in batch.items() if tp in assigned and recs}
        if not batch:
            return
        records = [r for recs in batch.values() for r in recs]
        started = time.perf_counter()
        dead = await self._apply_with_infra_retries(records)
        if dead is None:
            return  # stopping during an outage: leave offsets, the next owner redoes the batch
        for letter in dead:
            if not await self._dead_letter(letter):
                return  # stopping while the broker is away: the next owner redoes the batch
        BATCH_SECONDS.labels(self.settings.service, self.name).observe(
            time.perf_counter() - started
        )
        offsets = {tp: recs[-1].offset + 1 for tp, recs in batch.items()}
        self._handled_to.update(offsets)
        for tp, next_offset in offsets.items():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                CONSUMER_LAG.labels(
                    self.settings.service, self.name, tp.topic, str(tp.partition)
                ).set(max(0, highwater - next_offset))
        self._uncommitted.update(offsets)
        await self._commit_if_due(consumer)

    # -- records the Kafka client cannot read ----------------------------------------------------

    async def _pass_unreadable(self, consumer: AIOKafkaConsumer, error: Exception) -> None:
        """A fetched record the client library cannot even parse (e.g. a header name that is
        not UTF-8, which no Java client writes but a raw producer can) makes `getmany` raise
        for every partition, again at every call. Worse, the client then drops the records it
        had already taken from other partitions in that call and moves their positions past
        them. So: rewind every assigned partition to where this runner really is, then read
        them one at a time; the partition that fails has its unreadable record at its
        position: dead-letter it by reference (topic, partition, offset: there are no bytes to
        copy) and step over it. Every other record is applied as usual."""
        log.warning("a fetched record cannot be read", consumer=self.name, error=repr(error))
        # getmany is called outside the batch lock, as in `run`: a rebalance waits for the
        # lock, and getmany waits for the rebalance. A partition that moves meanwhile is its
        # next owner's (IllegalStateError on seek): it rewinds from the committed offsets.
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
                    async with self._batch_lock:
                        await self._handle_batch(consumer, records)
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
            async with self._batch_lock:
                await self._handle_batch(consumer, records)
            offset = self._handled_to.get(tp, offset)
        unreadable = unreadable_record(tp.topic, tp.partition, offset)
        reason = f"unreadable: the Kafka client cannot parse the record ({error!r})"
        async with self._batch_lock:
            if not await self._dead_letter(_DeadLetter(unreadable, reason[:2000])):
                return  # stopping while the broker is away: not past it
            consumer.seek(tp, offset + 1)
            self._handled_to[tp] = offset + 1
            self._uncommitted[tp] = offset + 1

    async def _commit_if_due(self, consumer: AIOKafkaConsumer) -> None:
        interval_s = self.settings.consumer_commit_interval_ms / 1000
        if self._uncommitted and time.monotonic() - self._committed_at >= interval_s:
            await self._commit_offsets(consumer)

    def forget_positions(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._handled_to.pop(tp, None)

    async def finish_before_revoke(self, revoked: Iterable[TopicPartition]) -> None:
        """Before partitions move: let the batch in hand finish, then commit the offsets of
        the moving partitions, so their next owner starts where this one ended."""
        async with self._batch_lock:
            if self._consumer is not None:
                await self._commit_or_log(self._consumer, revoked, when="before rebalance")

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
            log.warning("offset commit failed", when=when, consumer=self.name, error=repr(exc))

    async def _commit_offsets(
        self, consumer: AIOKafkaConsumer, only: Iterable[TopicPartition] | None = None
    ) -> None:
        """Commit the offsets of applied batches (of the partitions `only`, if given)."""
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
            log.warning("offset commit failed after rebalance", consumer=self.name, error=str(exc))

    async def _apply_with_infra_retries(
        self, records: list[ConsumerRecord[bytes, bytes]]
    ) -> list[_DeadLetter] | None:
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

    def _parse(self, record: ConsumerRecord[bytes, bytes]) -> _Work | _DeadLetter | None:
        try:
            return self._parse_or_raise(record)
        except Exception as exc:  # whatever a record holds, it must not stop the partition
            return _DeadLetter(record, f"unreadable: {describe_error(exc)}")

    def _parse_or_raise(self, record: ConsumerRecord[bytes, bytes]) -> _Work | _DeadLetter | None:
        try:
            envelope = RECENT_RECORDS.envelope(record.key, record.value, record.headers)
        except EnvelopeError as exc:
            return _DeadLetter(record, f"malformed: {exc}")
        subscription = self.subscriptions.get(envelope.type)
        if subscription is None:
            if envelope.type in self.ignored_types:
                return None
            return _DeadLetter(
                record, f"unknown event type {envelope.type[:200]!r} on {record.topic}"
            )
        # After the type: a record of no known type is poison for every reader, whatever
        # the reader's filter (another region's record, §9; a case not its business).
        if self.accept is not None and not self.accept(envelope):
            return None
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

    async def _apply(self, records: list[ConsumerRecord[bytes, bytes]]) -> list[_DeadLetter]:
        work: list[_Work] = []
        dead: list[_DeadLetter] = []
        for record in records:
            parsed = self._parse(record)
            if isinstance(parsed, _Work):
                work.append(parsed)
            elif isinstance(parsed, _DeadLetter):
                dead.append(parsed)
            else:
                self._count(record, "ignored")
        if work and self.relevant is not None:
            work = await self._relevant(work)
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
                fresh = await self._inbox_insert(session, _first_of_each(work))
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
                if self.batch_handler is not None:
                    await self.batch_handler(session, [(i.envelope, i.payload) for i in todo])
                else:
                    for item in todo:
                        await self._call(session, item)
                await flush_pending(session)
            except Exception as exc:
                if is_infrastructure_error(exc):
                    raise
                raise _HandlerFailed() from exc
        for item in work:
            if item.key in applied:
                self._count(item.record, "processed")

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
                                if not await self._inbox_insert(session, [item]):
                                    self._count(item.record, "duplicate")
                                    break
                                await self._call(session, item)
                                # This event's outbox rows belong to its savepoint.
                                await flush_pending(session)
                        except BaseException:
                            discard_pending(session)  # rolled back with the savepoint
                            raise
                        self._count(item.record, "processed")
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

    async def _call(self, session: AsyncSession, item: _Work) -> None:
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
            await subscription.handler(session, envelope, item.payload)

    async def _relevant(self, work: list[_Work]) -> list[_Work]:
        """The events that concern this reader; the others pass with no transaction at all.
        A case that becomes one of them after this read is one whose earlier events the
        reader would have passed over inside a transaction too (read committed)."""
        assert self.relevant is not None
        async with self.sessions() as session:
            driver = await driver_connection(session, transaction=False)
            events = [(item.envelope, item.payload) for item in work]
            flags = await self.relevant(driver, events)
        for item, flag in zip(work, flags, strict=True):
            if not flag:
                self._count(item.record, "ignored")
        return [item for item, flag in zip(work, flags, strict=True) if flag]

    async def _inbox_insert(self, session: AsyncSession, work: list[_Work]) -> set[str]:
        """Insert the inbox rows of `work` (distinct keys); the keys that were not there yet.
        One prepared statement for any batch size, on the session's asyncpg connection."""
        driver = await driver_connection(session)
        rows = await driver.fetch(
            self._inbox_sql,
            self.name,
            [item.key for item in work],
            [item.record.topic for item in work],
        )
        return {row[0] for row in rows}

    def _count(self, record: ConsumerRecord[bytes, bytes], outcome: str) -> None:
        EVENTS_CONSUMED.labels(self.settings.service, self.name, record.topic, outcome).inc()

    # -- dead letters --------------------------------------------------------------------------

    async def _dead_letter(self, letter: _DeadLetter) -> bool:
        """Store the letter; False if the runner stops while the broker is away."""
        record = letter.record
        assert self._letters is not None
        log.warning(
            "dead-lettered",
            consumer=self.name,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=letter.reason[:500],
        )
        shape = await self._letters.write(
            record, letter.reason, f"{self.settings.service}/{self.name}", stop=self._stop
        )
        if shape is None:
            return False
        if shape is not LetterShape.WHOLE:
            DEAD_LETTERS_TRUNCATED.labels(self.settings.service, self.name, record.topic).inc()
        DEAD_LETTERS.labels(self.settings.service, self.name, record.topic).inc()
        self._count(record, "dead_lettered")
        return True


def _first_of_each(work: list[_Work]) -> list[_Work]:
    seen: set[str] = set()
    out = []
    for item in work:
        if item.key not in seen:
            seen.add(item.key)
            out.append(item)
    return out


class _FinishBatchOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions move, the runner finishes its batch and commits their offsets (and
    any offsets of earlier batches not committed yet)."""

    def __init__(self, runner: ConsumerRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._runner.finish_before_revoke(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        # Where this runner was in a partition it held before may be stale now.
        self._runner.forget_positions(assigned)
