"""Transactional outbox on the real broker and database."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import defaultdict

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.common.db import unit_of_work
from services.common.envelope import Envelope
from services.common.outbox import Outbox, OutboxRelay
from services.common.rows import flush_deferred
from services.common.settings import CommonSettings
from tests.conftest import ROOT, MakeTopic, eventually
from tests.kafka_helpers import header, read_topic

pytestmark = pytest.mark.integration


def event(case_id: str, seq: int = 0) -> Envelope:
    return Envelope(
        type="gov.test.happened.v1", source="/tongban/test", subject=case_id, data={"seq": seq}
    )


async def unsent(engine: AsyncEngine, schema: str) -> int:
    """Rows in the outbox: the relay deletes what it published, so a drained outbox is
    empty (a relay that only marked rows sent would leave them there)."""
    async with engine.connect() as conn:
        return int(
            (await conn.execute(text(f'SELECT count(*) FROM "{schema}".outbox'))).scalar_one()
        )


async def test_committed_row_publishes_its_event_exactly_once(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    topic = await make_topic("outbox")
    outbox = Outbox(schema)
    published = event("HC-0001")
    async with unit_of_work(sessions) as session:
        await session.execute(
            text(f'INSERT INTO "{schema}".widget (id, case_id) VALUES (:id, :case)'),
            {"id": "w1", "case": "HC-0001"},
        )
        await outbox.add(session, topic, published)

    relay = OutboxRelay(settings, schema=schema)
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: _zero(engine, schema), what="outbox drained")
        records = await read_topic(settings, topic, min_records=1, idle=1.5)
    finally:
        relay.stop()
        await task
    assert [header(r, "ce_id") for r in records] == [published.id]
    assert records[0].key == b"HC-0001"
    assert (
        Envelope.from_record(records[0].key, records[0].value, list(records[0].headers))
        == published
    )


async def _zero(engine: AsyncEngine, schema: str) -> bool:
    return await unsent(engine, schema) == 0


async def test_rolled_back_transaction_publishes_nothing(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    topic = await make_topic("outbox")
    outbox = Outbox(schema)
    doomed, sentinel = event("HC-0002", 1), event("HC-0002", 2)
    with pytest.raises(RuntimeError):
        async with unit_of_work(sessions) as session:
            await outbox.add(session, topic, doomed)
            raise RuntimeError("business rule failed after the event was written")
    async with unit_of_work(sessions) as session:
        await outbox.add(session, topic, sentinel)

    relay = OutboxRelay(settings, schema=schema)
    task = asyncio.create_task(relay.run())
    try:
        records = await read_topic(settings, topic, min_records=1, idle=1.5)
    finally:
        relay.stop()
        await task
    assert [header(r, "ce_id") for r in records] == [sentinel.id]


async def test_rows_written_on_the_driver_connection_roll_back_with_the_transaction(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], schema: str
) -> None:
    """The outbox rows go in on the session's asyncpg connection (`flush_deferred`), here as
    the transaction's first statement, before any SQLAlchemy one: the BEGIN must come first
    (`driver_connection`), or the rows would commit on their own, outside the transaction."""
    outbox = Outbox(schema)
    with pytest.raises(RuntimeError):
        async with sessions() as session, session.begin():
            await outbox.add(session, "outbox-rollback", event("HC-0009"))
            await flush_deferred(session)
            await session.execute(
                text(f'INSERT INTO "{schema}".widget (id, case_id) VALUES (:id, :case)'),
                {"id": "w9", "case": "HC-0009"},
            )
            raise RuntimeError("business rule failed after the rows were written")
    assert await unsent(engine, schema) == 0
    async with engine.connect() as conn:
        widgets = await conn.execute(text(f'SELECT count(*) FROM "{schema}".widget'))
        assert widgets.scalar_one() == 0


async def test_relay_wakes_on_notify_not_only_on_poll(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    """With a one-minute safety poll, only NOTIFY can make the relay publish within the test."""
    topic = await make_topic("outbox")
    relay = OutboxRelay(settings.model_copy(update={"outbox_poll_s": 60.0}), schema=schema)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(1.0)  # the relay is idle, waiting on LISTEN
        async with unit_of_work(sessions) as session:
            await Outbox(schema).add(session, topic, event("HC-0003"))
        await eventually(lambda: _zero(engine, schema), timeout=20, what="notify-driven publish")
    finally:
        relay.stop()
        await task
    assert relay.published == 1


async def test_what_went_out_is_deleted_with_the_next_events_read(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    """All there was published, the relay keeps its rows until the next event's NOTIFY (the
    delete goes with that read: one round trip per event), or until the delay; never sent
    twice, and a stop deletes them."""
    topic = await make_topic("outbox")
    relay = OutboxRelay(
        settings.model_copy(update={"outbox_poll_s": 60.0, "outbox_delete_delay_ms": 60_000}),
        schema=schema,
    )
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(1.0)  # the relay is idle, waiting on LISTEN
        async with unit_of_work(sessions) as session:
            await Outbox(schema).add(session, topic, event("HC-0010"))
        await eventually(lambda: relay.published == 1, timeout=20, what="the first event out")
        await asyncio.sleep(0.5)
        assert await unsent(engine, schema) == 1  # published, its delete waiting
        async with unit_of_work(sessions) as session:
            await Outbox(schema).add(session, topic, event("HC-0011"))
        await eventually(lambda: relay.published == 2, timeout=20, what="the second event out")
        async with engine.connect() as conn:
            left = await conn.execute(text(f'SELECT key FROM "{schema}".outbox'))
            assert [bytes(k) for (k,) in left] == [b"HC-0011"]
    finally:
        relay.stop()
        await task
    assert await unsent(engine, schema) == 0
    records = await read_topic(settings, topic, min_records=2, idle=1.5)
    assert [r.key for r in records] == [b"HC-0010", b"HC-0011"]

    # With a short delay the rows go without a next event.
    relay = OutboxRelay(
        settings.model_copy(update={"outbox_poll_s": 60.0, "outbox_delete_delay_ms": 200}),
        schema=schema,
    )
    task = asyncio.create_task(relay.run())
    try:
        async with unit_of_work(sessions) as session:
            await Outbox(schema).add(session, topic, event("HC-0012"))
        await eventually(lambda: _zero(engine, schema), timeout=20, what="deleted after the delay")
        assert relay.published == 1
    finally:
        relay.stop()
        await task


async def test_standby_relay_takes_over_when_the_leader_stops(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    topic = await make_topic("outbox")
    outbox = Outbox(schema)
    leader, standby = OutboxRelay(settings, schema=schema), OutboxRelay(settings, schema=schema)
    leader_task = asyncio.create_task(leader.run())
    await asyncio.sleep(0.5)
    standby_task = asyncio.create_task(standby.run())
    try:
        async with unit_of_work(sessions) as session:
            await outbox.add(session, topic, event("HC-0004", 1))
        await eventually(lambda: _zero(engine, schema), what="leader publishes")
        assert (leader.published, standby.published) == (1, 0)
        leader.stop()
        await leader_task
        async with unit_of_work(sessions) as session:
            await outbox.add(session, topic, event("HC-0004", 2))
        await eventually(lambda: _zero(engine, schema), what="standby publishes")
        assert standby.published == 1
    finally:
        leader.stop()
        standby.stop()
        await asyncio.gather(leader_task, standby_task)


async def test_relay_killed_mid_batch_and_restarted_loses_nothing(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    topic = await make_topic("outbox", partitions=3)
    outbox = Outbox(schema)
    cases, per_case = 100, 40
    written: list[Envelope] = []
    async with unit_of_work(sessions) as session:
        for seq in range(per_case):
            batch = [event(f"HC-{c:04d}", seq) for c in range(cases)]
            await outbox.add_many(session, [(topic, e) for e in batch])
            written.extend(batch)
    total = len(written)

    env = {
        **os.environ,
        "TONGBAN_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "TONGBAN_DATABASE_URL": settings.database_url,
        "TONGBAN_OUTBOX_BATCH_SIZE": "100",
        "TONGBAN_SERVICE": "test-relay",
    }

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "services.common.outbox", "--schema", schema],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    first = start()
    try:
        # Kill -9 once part of the outbox is out: some batches sent, the rest pending.
        await eventually(
            lambda: _sent_between(engine, schema, 1, total - 1, total=total),
            timeout=60,
            interval=0.02,
            what="relay part-way through the outbox",
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    left_after_kill = await unsent(engine, schema)
    assert 0 < left_after_kill < total

    second = start()
    try:
        await eventually(lambda: _zero(engine, schema), timeout=90, what="restarted relay drains")
    finally:
        second.terminate()
        assert second.wait(timeout=30) == 0, "relay did not stop gracefully on SIGTERM"

    records = await read_topic(settings, topic, min_records=total, timeout=60, idle=2.0)
    ids = [header(r, "ce_id") for r in records]
    assert set(ids) == {e.id for e in written}, "an event was lost"
    # Per case, the first time each event appears follows the order it was written in.
    first_seen: dict[bytes, list[int]] = defaultdict(list)
    seen: set[str | None] = set()
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        eid = header(record, "ce_id")
        if eid in seen:
            continue
        seen.add(eid)
        first_seen[record.key].append(json.loads(record.value)["seq"])
    assert all(seqs == sorted(seqs) for seqs in first_seen.values()), "per-case order broken"
    assert len(first_seen) == cases


async def _sent_between(
    engine: AsyncEngine, schema: str, low: int, high: int, *, total: int
) -> bool:
    """Published rows are deleted: what is still in the outbox is what is not sent yet."""
    return low <= total - await unsent(engine, schema) <= high
