"""Consumer runner on the real broker and database: idempotence, poison, retries, offsets."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import REGISTRY
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.common.consumer import ConsumerGroup, ConsumerRunner, PermanentError, Subscription
from services.common.db import inbox_key
from services.common.envelope import Envelope
from services.common.kafka import client_options
from services.common.settings import CommonSettings
from tests.conftest import MakeTopic, eventually, unique
from tests.kafka_helpers import header, produce, read_topic

pytestmark = pytest.mark.integration

MADE = "gov.test.widget_made.v1"
NOTED = "gov.test.noted.v1"  # known to the consumer but not its business: ignored


class WidgetMade(BaseModel):
    wid: str
    seq: int


def made(case_id: str, wid: str, seq: int = 0, **overrides: Any) -> Envelope:
    fields: dict[str, Any] = {
        "type": MADE,
        "source": "/tongban/test",
        "subject": case_id,
        "data": {"wid": wid, "seq": seq},
    }
    fields.update(overrides)
    return Envelope(**fields)


def widget_writer(
    schema: str,
    calls: Counter[str] | None = None,
    fail: Callable[[WidgetMade], Exception | None] | None = None,
) -> Subscription:
    async def handle(session: AsyncSession, envelope: Envelope, payload: WidgetMade) -> None:
        if calls is not None:
            calls[payload.wid] += 1
        if fail is not None and (exc := fail(payload)) is not None:
            raise exc
        await session.execute(
            text(f'INSERT INTO "{schema}".widget (id, case_id, seq) VALUES (:id, :case, :seq)'),
            {"id": payload.wid, "case": envelope.subject, "seq": payload.seq},
        )

    return Subscription(handler=handle, model=WidgetMade)


Running = TypeVar("Running", ConsumerRunner, ConsumerGroup)


@asynccontextmanager
async def running(runner: Running) -> AsyncIterator[Running]:
    """A reader running as a group of its own, or a group of readers, until the block ends."""
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(runner.ready.wait(), 30)
        yield runner
    finally:
        runner.stop()
        await asyncio.wait_for(task, 30)


async def widgets(engine: AsyncEngine, schema: str) -> list[tuple[str, str, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(f'SELECT id, case_id, seq FROM "{schema}".widget ORDER BY id')
        )
        return [(r[0], r[1], r[2]) for r in rows]


async def has_widget(engine: AsyncEngine, schema: str, wid: str) -> bool:
    return any(w[0] == wid for w in await widgets(engine, schema))


def runner_for(
    settings: CommonSettings,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    topic: str,
    subscription: Subscription,
    *,
    dlq: str,
    group: str | None = None,
    **overrides: Any,
) -> ConsumerRunner:
    return ConsumerRunner(
        settings.model_copy(update={"dlq_topic": dlq, **overrides}),
        name=group or unique("consumer"),
        topics=[topic],
        subscriptions={MADE: subscription},
        ignored_types=[NOTED],
        sessions=sessions,
        schema=schema,
    )


async def test_same_event_delivered_twice_has_one_effect(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    topic, dlq = await make_topic("in"), await make_topic("dlq")
    calls: Counter[str] = Counter()
    twice = made("HC-1", "w-twice")
    last = made("HC-1", "w-last")
    # The duplicate arrives in the same batch and again in a later one.
    await produce(settings, topic, [twice.to_record(), twice.to_record()])
    async with running(
        runner_for(settings, sessions, schema, topic, widget_writer(schema, calls), dlq=dlq)
    ):
        await eventually(lambda: has_widget(engine, schema, "w-twice"), what="first delivery")
        await produce(settings, topic, [twice.to_record(), last.to_record()])
        await eventually(lambda: has_widget(engine, schema, "w-last"), what="later record")
    assert await widgets(engine, schema) == [("w-last", "HC-1", 0), ("w-twice", "HC-1", 0)]
    assert calls["w-twice"] == 1
    assert await read_topic(settings, dlq, idle=0.5) == []


async def test_poison_records_go_to_the_dead_letter_topic_and_the_next_is_processed(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    topic, dlq = await make_topic("in"), await make_topic("dlq")
    key, good_value, good_headers = made("HC-2", "w-good").to_record()
    _k, _v, unknown_headers = made("HC-2", "x", type="gov.test.martian.v1").to_record()
    _k, _v, fresh_headers = made("HC-2", "y").to_record()
    poison = [
        (key, b"\x00\x01 not json", made("HC-2", "a").to_record()[2]),
        (key, good_value, unknown_headers),
        (key, json.dumps({"wid": "w-bad", "seq": "many"}).encode(), fresh_headers),
        (key, good_value, [("content-type", b"application/json")]),
    ]
    ignored = made("HC-2", "w-ignored", type=NOTED).to_record()
    await produce(settings, topic, [*poison, ignored, (key, good_value, good_headers)])

    async with running(
        runner_for(settings, sessions, schema, topic, widget_writer(schema), dlq=dlq)
    ):
        await eventually(lambda: has_widget(engine, schema, "w-good"), what="good record")
        letters = await read_topic(settings, dlq, min_records=4, idle=0.5)

    assert await widgets(engine, schema) == [("w-good", "HC-2", 0)]
    reasons = [header(r, "dlq_reason") or "" for r in letters]
    assert len(letters) == 4, reasons
    assert "not JSON" in reasons[0]
    assert "unknown event type 'gov.test.martian.v1'" in reasons[1]
    assert "schema-invalid" in reasons[2] and "seq" in reasons[2]
    assert "missing headers" in reasons[3]
    for letter, original in zip(letters, poison, strict=True):
        assert letter.key == original[0] and letter.value == original[1]
        assert (header(letter, "dlq_source") or "").startswith("test/consumer_")
        assert header(letter, "dlq_topic") == topic
        assert header(letter, "dlq_offset") is not None


async def test_a_handler_that_keeps_failing_is_retried_then_dead_lettered(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    topic, dlq = await make_topic("in"), await make_topic("dlq")
    calls: Counter[str] = Counter()

    def fail(payload: WidgetMade) -> Exception | None:
        if payload.wid == "w-flaky" and calls["w-flaky"] <= 2:
            return RuntimeError("flaky downstream")
        if payload.wid == "w-broken":
            return RuntimeError("always broken")
        if payload.wid == "w-refused":
            return PermanentError("decision from a department the case is not routed to")
        return None

    records = [
        made("HC-3", w, i).to_record()
        for i, w in enumerate(["w-ok1", "w-broken", "w-flaky", "w-refused", "w-ok2"])
    ]
    await produce(settings, topic, records)
    async with running(
        runner_for(
            settings,
            sessions,
            schema,
            topic,
            widget_writer(schema, calls, fail),
            dlq=dlq,
            consumer_handler_attempts=3,
        )
    ):
        await eventually(lambda: has_widget(engine, schema, "w-ok2"), what="record after failures")
        letters = await read_topic(settings, dlq, min_records=2, idle=0.5)

    assert [w[0] for w in await widgets(engine, schema)] == ["w-flaky", "w-ok1", "w-ok2"]
    # Three attempts in isolation, plus at most one try in the batch's fast path (which stops
    # at the first failing record of the batch).
    assert 3 <= calls["w-broken"] <= 1 + 3
    assert 1 <= calls["w-refused"] <= 1 + 1, "a permanent error is not retried"
    reasons = [header(r, "dlq_reason") or "" for r in letters]
    assert len(reasons) == 2, reasons
    assert "handler failed after 3 attempts" in reasons[0] and "always broken" in reasons[0]
    assert reasons[1].startswith("rejected: decision from a department")


# 0: a commit after every batch; 60 s: nothing is committed while running, so only the
# commit at a graceful stop can keep the second run from redoing the first run's records.
@pytest.mark.parametrize("commit_interval_ms", [0, 60_000])
async def test_offsets_are_committed_after_the_transaction_so_a_restart_does_not_redo(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
    commit_interval_ms: int,
) -> None:
    topic, dlq = await make_topic("in"), await make_topic("dlq")
    group = unique("group")
    first_calls: Counter[str] = Counter()
    await produce(settings, topic, [made(f"HC-4{i}", f"w-{i}").to_record() for i in range(20)])
    async with running(
        runner_for(
            settings,
            sessions,
            schema,
            topic,
            widget_writer(schema, first_calls),
            dlq=dlq,
            group=group,
            consumer_commit_interval_ms=commit_interval_ms,
        )
    ):
        await eventually(lambda: _count(engine, schema, 20), what="first 20 applied")
    # The inbox would hide a redelivery from the handler: read the group's offsets instead.
    assert await committed_total(settings, group) == 20
    second_calls: Counter[str] = Counter()
    await produce(settings, topic, [made("HC-99", "w-after").to_record()])
    async with running(
        runner_for(
            settings,
            sessions,
            schema,
            topic,
            widget_writer(schema, second_calls),
            dlq=dlq,
            group=group,
        )
    ):
        await eventually(lambda: has_widget(engine, schema, "w-after"), what="new record")
    assert sum(first_calls.values()) == 20
    assert dict(second_calls) == {"w-after": 1}, "a graceful stop left offsets uncommitted"


async def committed_total(settings: CommonSettings, group: str) -> int:
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for meta in offsets.values())


async def test_events_of_one_case_are_applied_in_order(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    topic, dlq = await make_topic("in"), await make_topic("dlq")
    applied: list[tuple[str, int]] = []

    async def record_order(session: AsyncSession, envelope: Envelope, payload: WidgetMade) -> None:
        applied.append((envelope.subject, payload.seq))

    await produce(
        settings,
        topic,
        [made(f"HC-5{c}", f"w{c}-{s}", s).to_record() for s in range(30) for c in range(5)],
    )
    runner = ConsumerRunner(
        settings.model_copy(update={"dlq_topic": dlq, "consumer_max_records": 7}),
        name=unique("consumer"),
        topics=[topic],
        subscriptions={MADE: Subscription(record_order, WidgetMade)},
        sessions=sessions,
        schema=schema,
    )
    async with running(runner):
        await eventually(lambda: len(applied) >= 150, what="all 150 applied")
    for case in {c for c, _ in applied}:
        assert [s for c, s in applied if c == case] == list(range(30))


async def _count(engine: AsyncEngine, schema: str, n: int) -> bool:
    return len(await widgets(engine, schema)) == n


async def test_a_batch_handler_gets_each_fresh_event_once_in_order_and_poison_still_isolated(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    topic, dlq = await make_topic("in"), await make_topic("dlq")
    batches: list[list[tuple[str, int]]] = []
    # The one-event handler (the slow path's) and the batch handler apply the same way.
    writer = widget_writer(
        schema, fail=lambda p: ValueError("cannot apply this one") if p.wid == "w-bad" else None
    )

    async def apply_batch(session: AsyncSession, events: Any) -> None:
        batches.append([(e.subject, p.seq) for e, p in events])
        for envelope, payload in events:
            await writer.handler(session, envelope, payload)

    first = [made("HC-7", f"w7-{s}", s) for s in range(20)]
    bad = made("HC-8", "w-bad", 0)
    await produce(settings, topic, [e.to_record() for e in first] + [first[3].to_record()])
    runner = ConsumerRunner(
        settings.model_copy(update={"dlq_topic": dlq, "consumer_handler_attempts": 1}),
        name=unique("consumer"),
        topics=[topic],
        subscriptions={MADE: writer},
        sessions=sessions,
        schema=schema,
        batch_handler=apply_batch,
    )
    async with running(runner):
        await eventually(lambda: _count(engine, schema, 20), what="20 widgets")
        await produce(settings, topic, [bad.to_record(), made("HC-8", "w8-1", 1).to_record()])
        await eventually(lambda: _count(engine, schema, 21), what="the record after the poison")
    seen = [event for batch in batches for event in batch if event[0] == "HC-7"]
    assert seen == [("HC-7", s) for s in range(20)]  # once each, in order, the copy skipped
    assert any(len(batch) > 1 for batch in batches)  # batched, not one call per event
    dead = await read_topic(settings, dlq, min_records=1, idle=0.5)
    assert [header(r, "ce_subject") for r in dead] == ["HC-8"]
    assert "cannot apply this one" in str(header(dead[0], "dlq_reason"))


async def test_a_reader_with_its_own_inbox_writes_no_inbox_row_and_its_table_dedupes(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    """intake's timeline: the handler's own table, keyed by the event's inbox key, is the
    record of what was applied. The runtime passes a redelivery on (no inbox row to find it
    by); the handler's insert finds it and applies nothing; no inbox row is written."""
    topic, dlq = await make_topic("in"), await make_topic("dlq")
    async with engine.begin() as conn:
        await conn.execute(text(f'CREATE TABLE "{schema}".seen (event_id text PRIMARY KEY)'))
    handed: Counter[str] = Counter()
    writer = widget_writer(schema)

    async def apply_batch(session: AsyncSession, events: Any) -> set[str]:
        applied = set()
        for envelope, payload in events:
            handed[payload.wid] += 1
            if payload.wid == "w-boom" and handed["w-boom"] == 1:
                raise RuntimeError("fails once: the batch goes record by record")
            stored = await session.execute(
                text(
                    f'INSERT INTO "{schema}".seen VALUES (:id) ON CONFLICT DO NOTHING '
                    "RETURNING event_id"
                ),
                {"id": inbox_key(envelope.id)},
            )
            if (row := stored.first()) is not None:
                applied.add(row[0])
                await writer.handler(session, envelope, payload)
        return applied  # the others count as duplicates

    twice = made("HC-9", "w-twice")
    name = unique("consumer")

    def runner() -> ConsumerRunner:
        return ConsumerRunner(
            settings.model_copy(update={"dlq_topic": dlq}),
            name=name,
            topics=[topic],
            subscriptions={MADE: writer},  # with its own inbox, the batch handler applies
            sessions=sessions,
            schema=schema,
            batch_handler=apply_batch,
            own_inbox=True,
        )

    # The copy in the same batch is dropped by the runtime; the later one reaches the handler.
    await produce(settings, topic, [twice.to_record(), twice.to_record()])
    async with running(runner()):
        await eventually(lambda: has_widget(engine, schema, "w-twice"), what="first delivery")
        last = made("HC-9", "w-last")
        await produce(settings, topic, [twice.to_record(), last.to_record()])
        await eventually(lambda: has_widget(engine, schema, "w-last"), what="later record")
    # A copy in a batch that goes record by record (another of its records fails once): the
    # batch handler takes each alone, and the copy still counts as a duplicate.
    await produce(settings, topic, [twice.to_record(), made("HC-9", "w-boom").to_record()])
    async with running(runner()):
        await eventually(lambda: has_widget(engine, schema, "w-boom"), what="record by record")
    assert await widgets(engine, schema) == [
        ("w-boom", "HC-9", 0),
        ("w-last", "HC-9", 0),
        ("w-twice", "HC-9", 0),
    ]
    assert handed["w-twice"] >= 3  # the redeliveries came to the handler, which applied nothing

    def consumed(outcome: str) -> float:
        labels = {"service": settings.service, "consumer": name, "topic": topic}
        return (
            REGISTRY.get_sample_value(
                "tongban_events_consumed_total", labels | {"outcome": outcome}
            )
            or 0.0
        )

    # w-twice, w-last and w-boom applied; the three copies of w-twice counted as what they were
    assert (consumed("processed"), consumed("duplicate")) == (3.0, 3.0)
    async with engine.connect() as conn:
        inbox = await conn.execute(
            text(f'SELECT count(*) FROM "{schema}".inbox WHERE consumer = :c'), {"c": name}
        )
        assert inbox.scalar_one() == 0
    with pytest.raises(ValueError, match="whole"):
        ConsumerRunner(
            settings,
            name=name,
            topics=[topic],
            subscriptions={MADE: writer},
            sessions=sessions,
            schema=schema,
            own_inbox=True,
        )


async def test_before_batch_runs_first_in_a_batch_of_several_events_and_shares_its_fate(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    """`before_batch` sees a batch's fresh events, in its transaction, before their handlers;
    a batch of one skips it. When it fails, the batch is applied record by record instead."""
    topic, dlq = await make_topic("in", partitions=1), await make_topic("dlq")
    group = unique("consumer")
    seen: list[list[str]] = []
    order: list[str] = []

    async def before(session: AsyncSession, events: Any) -> None:
        seen.append([payload.wid for _envelope, payload in events])
        order.append("before")
        if len(seen) == 1:
            raise RuntimeError("the first batch's hook fails")

    writer = widget_writer(schema)

    async def handle(session: AsyncSession, envelope: Envelope, payload: WidgetMade) -> None:
        order.append(payload.wid)
        await writer.handler(session, envelope, payload)

    def runner() -> ConsumerRunner:
        made_runner = runner_for(
            settings,
            sessions,
            schema,
            topic,
            Subscription(handle, WidgetMade),
            dlq=dlq,
            group=group,
        )
        made_runner.before_batch = before
        return made_runner

    # Produced before the reader starts: each pair is one batch.
    await produce(settings, topic, [made("HC-B", w).to_record() for w in ("w-f1", "w-f2")])
    async with running(runner()):
        await eventually(lambda: has_widget(engine, schema, "w-f2"), what="the failed batch")
        await produce(settings, topic, [made("HC-B", "w-alone").to_record()])
        await eventually(lambda: has_widget(engine, schema, "w-alone"), what="a batch of one")
    await produce(settings, topic, [made("HC-B", w).to_record() for w in ("w-b1", "w-b2")])
    async with running(runner()):
        await eventually(lambda: has_widget(engine, schema, "w-b2"), what="the second batch")
    # The failed hook's batch went record by record, without it; a batch of one skips it.
    assert seen == [["w-f1", "w-f2"], ["w-b1", "w-b2"]]
    assert order == ["before", "w-f1", "w-f2", "w-alone", "before", "w-b1", "w-b2"]
    assert {w[0] for w in await widgets(engine, schema)} == {
        "w-f1",
        "w-f2",
        "w-alone",
        "w-b1",
        "w-b2",
    }
    assert await read_topic(settings, dlq, idle=0.5) == []
