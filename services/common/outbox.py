"""Transactional outbox: events are rows written in the caller's transaction; a relay publishes.

Writers call `Outbox.add(session, topic, envelope)` inside the unit of work that changes state,
so an event exists exactly when its state change committed. The relay publishes unsent rows in
`id` order with an idempotent producer, waits for every ack, then deletes them. A crash
between publish and delete re-publishes the tail on restart (at-least-once on the wire); the
consumers' inbox turns that into exactly-once effects.

Published rows are deleted, not marked: the events live on in Kafka (and in each consumer's
own tables), a marked row would be kept forever, and marking rewrote the whole row (its
event body included, about 2 KB) into the WAL and every index, a third of tongban's WAL per
case. The delete of one batch and the read of the next are one statement: one round trip per
batch. When a batch was all there was, that statement waits for the next event's NOTIFY (at
most `outbox_delete_delay_ms`), so at a few events a second an event costs one round trip,
not a read and then a delete.

One relay per schema is active at a time (a PostgreSQL advisory lock): two relays reading the
same table in parallel could reorder one case's events. Spare relays wait as hot standbys.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import zlib
from collections.abc import Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.db import asyncpg_dsn, outbox_channel, runtime_metadata
from services.common.envelope import Envelope
from services.common.failures import AmbiguousCommits
from services.common.kafka import make_producer
from services.common.logs import configure_logging, get_logger
from services.common.metrics import EVENTS_PUBLISHED, OUTBOX_BACKLOG, RELAY_LEADER
from services.common.rows import defer_rows
from services.common.settings import CommonSettings

log = get_logger(__name__)


class Outbox:
    """Writes events into one service schema's outbox table.

    `add` defers the row (`rows.defer_rows`); the rows go into the table with the unit of
    work's other deferred rows, in one statement, when it ends (`rows.flush_deferred`, as the
    consumer and `unit_of_work` call it before they commit; at commit otherwise). A consumer
    batch of a hundred events then costs one INSERT, not one per event.
    """

    def __init__(self, schema: str) -> None:
        self.schema = schema
        _metadata, self.table, _inbox = runtime_metadata(schema)

    @staticmethod
    def row(topic: str, envelope: Envelope, outbox_id: str | None = None) -> dict[str, Any]:
        """`outbox_id`: the row's own unique id when it is not the event's (an event relayed
        to a partner region keeps its `ce_id`, and may be in this outbox already)."""
        key, value, headers = envelope.to_record()
        return {
            "event_id": outbox_id or envelope.id,
            "topic": topic,
            "key": key,
            "value": value,
            "headers": [[name, raw.decode()] for name, raw in headers],
        }

    async def add(
        self, session: AsyncSession, topic: str, envelope: Envelope, outbox_id: str | None = None
    ) -> None:
        defer_rows(session, self.table, [self.row(topic, envelope, outbox_id)])

    async def add_many(self, session: AsyncSession, events: Sequence[tuple[str, Envelope]]) -> None:
        defer_rows(session, self.table, (self.row(t, e) for t, e in events))


class OutboxRelay:
    def __init__(
        self,
        settings: CommonSettings,
        *,
        schema: str,
        producer: AIOKafkaProducer | None = None,
    ) -> None:
        self.settings = settings
        self.schema = schema
        self._own_producer = producer is None
        self._producer = producer
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        # Advisory lock id: stable per schema, so relays of one service exclude each other.
        self._lock_id = zlib.crc32(f"tongban-outbox:{schema}".encode())
        self.published = 0
        self._faults = AmbiguousCommits(settings.fault_ambiguous_commit_rate)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Publish until stopped; survive database and broker restarts with backoff."""
        backoff = 0.2
        while not self._stop.is_set():
            try:
                await self._run_as_leader()
                backoff = 0.2
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning(
                    "outbox relay lost the database; retrying",
                    error=str(exc),
                    schema=self.schema,
                    retry_in_s=backoff,
                )
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        if self._own_producer and self._producer is not None:
            await self._producer.stop()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _run_as_leader(self) -> None:
        conn: asyncpg.Connection = await asyncpg.connect(asyncpg_dsn(self.settings.database_url))
        try:
            while not self._stop.is_set():
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lock_id):
                    break
                await self._sleep(self.settings.outbox_poll_s)  # standby: another relay leads
            else:
                return
            await conn.add_listener(outbox_channel(self.schema), self._on_notify)
            log.info("outbox relay leading", schema=self.schema)
            RELAY_LEADER.labels(self.settings.service).set(1)
            published: list[int] = []
            delay = self.settings.outbox_delete_delay_ms / 1000
            while not self._stop.is_set():
                self._wake.clear()
                rows = await self._delete_and_fetch(conn, published)
                published = await self._publish(rows)
                if not rows:
                    await self._wait_for_notify(self.settings.outbox_poll_s)
                elif published and len(rows) < self.settings.outbox_batch_size and delay:
                    # All there was went out: its delete goes with the next read, which the
                    # next event's NOTIFY brings (or the delay: the outbox does not keep them).
                    await self._wait_for_notify(delay)
            if published:  # stopping: what went out must not go out again from a new leader
                await conn.execute(
                    f'DELETE FROM "{self.schema}".outbox WHERE id = ANY($1::bigint[])', published
                )
        finally:
            RELAY_LEADER.labels(self.settings.service).set(0)
            await conn.close(timeout=5)  # closing the session releases the advisory lock

    def _on_notify(self, *_args: object) -> None:
        self._wake.set()

    async def _wait_for_notify(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = make_producer(self.settings, client_id=f"{self.settings.service}-relay")
            await producer.start()
            self._producer = producer
        return self._producer

    async def _delete_and_fetch(
        self, conn: asyncpg.Connection, published: list[int]
    ) -> list[asyncpg.Record]:
        """Delete the rows just published and read the next unsent ones, in one statement.

        The SELECT sees the snapshot from before the CTE's delete, hence the `<> ALL` filter.
        Rows committed out of `id` order are found by a later read (the scan starts from the
        oldest unsent row every time), so none is skipped. Rows with `sent_at` set (marked
        by relays before they deleted, or held back by a test) are never read again."""
        rows: list[asyncpg.Record] = await conn.fetch(
            f'WITH published AS (DELETE FROM "{self.schema}".outbox '
            "WHERE id = ANY($1::bigint[])) "
            f'SELECT id, topic, key, value, headers FROM "{self.schema}".outbox '
            "WHERE sent_at IS NULL AND id <> ALL($1::bigint[]) ORDER BY id LIMIT $2",
            published,
            self.settings.outbox_batch_size,
        )
        if published:
            self._faults.maybe_raise()  # fault suite only: the delete's answer "lost"
        OUTBOX_BACKLOG.labels(self.settings.service).set(len(rows))
        return rows

    async def _publish(self, rows: list[asyncpg.Record]) -> list[int]:
        """Publish rows in order and wait for every ack; the ids of what went out (none if
        the broker failed: the same rows are read and sent again)."""
        if not rows:
            return []
        try:
            producer = await self._ensure_producer()
            # Enqueue all, then await every ack: the producer pipelines the batch and keeps
            # per-partition order (idempotent producer), so one case's events stay in order.
            futures = [
                await producer.send(
                    row["topic"],
                    key=row["key"],
                    value=row["value"],
                    headers=[(name, value.encode()) for name, value in _headers(row)],
                )
                for row in rows
            ]
            await asyncio.gather(*futures)
        except Exception as exc:
            # Broker down, leader moving, or a fenced producer: start a fresh producer after
            # a pause and publish the same rows again (consumers dedupe by event id).
            log.warning("outbox publish failed; will retry", error=repr(exc), schema=self.schema)
            await self._reset_producer()
            await self._sleep(1.0)
            return []
        for row in rows:
            EVENTS_PUBLISHED.labels(self.settings.service, row["topic"]).inc()
        self.published += len(rows)
        return [row["id"] for row in rows]

    async def _reset_producer(self) -> None:
        if self._own_producer and self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                await asyncio.wait_for(producer.stop(), timeout=10)
            except Exception as exc:  # a dying producer may fail to stop; drop it anyway
                log.warning("producer stop failed", error=repr(exc))


def _headers(row: Any) -> list[tuple[str, str]]:
    headers = row["headers"]
    if isinstance(headers, str):  # asyncpg returns jsonb as text unless a codec is set
        headers = json.loads(headers)
    return [(str(name), str(value)) for name, value in headers]


def main(argv: list[str] | None = None) -> None:
    """Run one outbox relay as its own process (used by the fault tests and deployments)."""
    parser = argparse.ArgumentParser(
        prog="python -m services.common.outbox",
        description="Publish a service schema's outbox to Kafka until SIGTERM.",
    )
    parser.add_argument("--schema", required=True, help="service schema whose outbox to relay")
    args = parser.parse_args(argv)
    settings = CommonSettings()
    configure_logging(service=f"{settings.service}-relay", level=settings.log_level)
    relay = OutboxRelay(settings, schema=args.schema)

    async def _run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, relay.stop)
        await relay.run()

    asyncio.run(_run())


if __name__ == "__main__":
    main()
