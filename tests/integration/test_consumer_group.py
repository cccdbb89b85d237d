"""One consumer group for several readers, on the real broker and database: each reader gets
the records of its topics and applies them on its own; a reader that waits holds only its
partitions; a record no reader can read is dead-lettered once; a new group starts where the
readers' former groups stood."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.common import consumer as consumer_module
from services.common.consumer import ConsumerGroup, ConsumerRunner, Subscription
from services.common.envelope import Envelope
from services.common.kafka import client_options
from services.common.settings import CommonSettings
from tests.conftest import MakeTopic, eventually, unique
from tests.integration.test_consumer import MADE, NOTED, WidgetMade, made, running
from tests.kafka_helpers import header, produce, read_topic

pytestmark = pytest.mark.integration


def writer(
    schema: str,
    prefix: str,
    calls: Counter[str],
    gate: asyncio.Event | None = None,
    opens: asyncio.Event | None = None,
) -> Subscription:
    """Writes widget `<prefix>:<wid>`; with `gate`, fails until the gate is open; with
    `opens`, opens that gate once its row is written."""

    async def handle(session: AsyncSession, envelope: Envelope, payload: WidgetMade) -> None:
        calls[f"{prefix}:{payload.wid}"] += 1
        if gate is not None and not gate.is_set():
            raise RuntimeError("not yet: the case has not arrived")
        await session.execute(
            text(f'INSERT INTO "{schema}".widget (id, case_id, seq) VALUES (:id, :case, :seq)'),
            {"id": f"{prefix}:{payload.wid}", "case": envelope.subject, "seq": payload.seq},
        )
        if opens is not None:
            opens.set()

    return Subscription(handler=handle, model=WidgetMade)


def reader(
    settings: CommonSettings,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    name: str,
    topics: list[str],
    subscription: Subscription,
) -> ConsumerRunner:
    return ConsumerRunner(
        settings,
        name=name,
        topics=topics,
        subscriptions={MADE: subscription},
        ignored_types=[NOTED],
        sessions=sessions,
        schema=schema,
    )


async def widget_ids(engine: AsyncEngine, schema: str) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(text(f'SELECT id FROM "{schema}".widget'))
        return {r[0] for r in rows}


async def inbox_consumers(engine: AsyncEngine, schema: str) -> Counter[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(text(f'SELECT consumer FROM "{schema}".inbox'))
        return Counter(r[0] for r in rows)


async def committed(settings: CommonSettings, group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def test_each_reader_applies_the_records_of_its_own_topics(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    shared, own = await make_topic("shared", partitions=2), await make_topic("own")
    dlq = await make_topic("dlq")
    cfg = settings.model_copy(update={"dlq_topic": dlq})
    calls: Counter[str] = Counter()
    one = reader(cfg, sessions, schema, unique("one"), [shared], writer(schema, "one", calls))
    two = reader(cfg, sessions, schema, unique("two"), [shared, own], writer(schema, "two", calls))
    group_id = unique("group")
    await produce(settings, shared, [made(f"HC-{n}", f"s{n}").to_record() for n in range(6)])
    await produce(settings, own, [made("HC-9", "o1").to_record()])
    async with running(ConsumerGroup(cfg, group_id=group_id, readers=[one, two])):
        await eventually(
            lambda: _has(engine, schema, {"two:o1", "one:s5", "two:s5"}), what="both readers"
        )
    ids = await widget_ids(engine, schema)
    assert ids == {f"{p}:s{n}" for p in ("one", "two") for n in range(6)} | {"two:o1"}
    assert set(calls.values()) == {1}, calls  # each record once per reader, none twice
    assert await inbox_consumers(engine, schema) == Counter({one.name: 6, two.name: 7})
    offsets = await committed(settings, group_id)
    assert {tp.topic for tp in offsets} == {shared, own}
    assert sum(o for tp, o in offsets.items() if tp.topic == shared) == 6
    assert await read_topic(settings, dlq, idle=0.5) == []


async def _has(engine: AsyncEngine, schema: str, wanted: set[str]) -> bool:
    return wanted <= await widget_ids(engine, schema)


async def test_a_reader_that_waits_holds_only_its_own_partitions(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    """A decision that overtook its case fails (not yet) and is retried; the case's record on
    another topic, in the same group, is applied meanwhile, and the decision then goes
    through: nothing is dead-lettered. One loop over all readers would have held the case
    behind the decision's retries until it was dead-lettered."""
    decisions, routed = await make_topic("decisions"), await make_topic("routed")
    dlq = await make_topic("dlq")
    cfg = settings.model_copy(
        update={
            "dlq_topic": dlq,
            "consumer_handler_attempts": 6,
            "consumer_retry_backoff_s": 0.3,
            "consumer_retry_backoff_max_s": 1.0,
        }
    )
    calls: Counter[str] = Counter()
    arrived = asyncio.Event()
    decider = reader(
        cfg,
        sessions,
        schema,
        unique("decide"),
        [decisions],
        writer(schema, "decided", calls, gate=arrived),
    )
    taker = reader(
        cfg,
        sessions,
        schema,
        unique("take"),
        [routed],
        writer(schema, "taken", calls, opens=arrived),
    )
    await produce(settings, decisions, [made("HC-1", "w").to_record()])
    async with running(ConsumerGroup(cfg, group_id=unique("group"), readers=[decider, taker])):
        await asyncio.wait_for(_first_call(calls, "decided:w"), 30)
        await produce(settings, routed, [made("HC-1", "w").to_record()])
        await eventually(lambda: _has(engine, schema, {"taken:w", "decided:w"}), what="both")
    assert calls["taken:w"] == 1
    assert calls["decided:w"] >= 2  # it waited for the case, then went through
    assert await read_topic(settings, dlq, idle=0.5) == []


async def _first_call(calls: Counter[str], key: str) -> None:
    while not calls[key]:
        await asyncio.sleep(0.05)


async def test_a_record_no_reader_can_read_is_dead_lettered_once_by_the_group(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    topic, dlq = await make_topic("in"), await make_topic("dlq")
    cfg = settings.model_copy(update={"dlq_topic": dlq})
    calls: Counter[str] = Counter()
    one = reader(cfg, sessions, schema, unique("one"), [topic], writer(schema, "one", calls))
    two = reader(cfg, sessions, schema, unique("two"), [topic], writer(schema, "two", calls))
    key, value, _headers = made("HC-3", "bad").to_record()
    _k, _v, martian = made("HC-3", "x", type="gov.test.martian.v1").to_record()
    good = made("HC-3", "good").to_record()
    await produce(settings, topic, [(key, value, []), (key, value, martian), good])
    group_id = unique("group")
    async with running(ConsumerGroup(cfg, group_id=group_id, readers=[one, two])):
        await eventually(lambda: _has(engine, schema, {"one:good", "two:good"}), what="good")
        letters = await read_topic(settings, dlq, min_records=2, idle=0.5)
    assert len(letters) == 2
    assert [header(r, "dlq_source") for r in letters] == [f"test/{group_id}"] * 2
    reasons = [header(r, "dlq_reason") or "" for r in letters]
    assert "missing headers" in reasons[0]
    assert "unknown event type 'gov.test.martian.v1'" in reasons[1]


async def test_a_new_group_starts_where_the_former_groups_stand(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    """The upgrade from a group per reader: the service's new group commits, before it
    joins, the least offset of the former groups, so nothing is read again from the start
    (and nothing is skipped: the slower former group sets the place)."""
    topic, dlq = await make_topic("in"), await make_topic("dlq")
    cfg = settings.model_copy(update={"dlq_topic": dlq})
    calls: Counter[str] = Counter()
    names = unique("one"), unique("two")

    def readers() -> list[ConsumerRunner]:
        return [
            reader(cfg, sessions, schema, n, [topic], writer(schema, n[:3], calls)) for n in names
        ]

    first, second = readers()
    await produce(settings, topic, [made("HC-4", f"a{n}").to_record() for n in range(3)])
    async with running(first):  # the former group of `one` reads all three
        await eventually(lambda: _has(engine, schema, {"one:a2"}), what="one's first records")
    await produce(settings, topic, [made("HC-4", "b0").to_record()])
    async with running(second):  # `two`'s former group reads all four
        await eventually(lambda: _has(engine, schema, {"two:b0"}), what="two's records")
    former = {n: await committed(settings, n) for n in names}
    assert sum(former[names[0]].values()) == 3 and sum(former[names[1]].values()) == 4

    group_id = unique("group")
    group = ConsumerGroup(cfg, group_id=group_id, readers=readers(), seed_from=list(names))
    async with running(group):
        await eventually(lambda: _has(engine, schema, {"one:b0"}), what="one's missed record")
    assert sum((await committed(settings, group_id)).values()) == 4
    # Seeded at `one`'s place (3): only b0 was read again, and `two` met it in its inbox.
    assert calls == Counter(
        {
            "one:a0": 1,
            "one:a1": 1,
            "one:a2": 1,
            "one:b0": 1,
            "two:a0": 1,
            "two:a1": 1,
            "two:a2": 1,
            "two:b0": 1,
        }
    )


@pytest.mark.parametrize("paused_after_s", [30.0, 0.2], ids=["waiting", "paused-and-polling"])
async def test_a_group_behind_its_topics_holds_no_more_records_than_its_limit(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
    monkeypatch: pytest.MonkeyPatch,
    paused_after_s: float,
) -> None:
    """A reader applies one batch at a time: what its group fetched beyond that only waited in
    memory (intake's RSS grew by tens of MB while its timeline was behind). At
    `consumer_max_records_in_flight` the group fetches no more; held there for long (an
    outage; shortened here) it pauses every partition and polls without fetching, to stay in
    its group; when the batches finish, every record is applied once."""
    monkeypatch.setattr(consumer_module, "_ROOM_WAIT_BEFORE_POLL_S", paused_after_s)
    topic, dlq = await make_topic("backlog", partitions=4), await make_topic("dlq")
    cfg = settings.model_copy(
        update={
            "dlq_topic": dlq,
            "consumer_max_records": 3,
            "consumer_max_records_in_flight": 4,
            "consumer_poll_ms": 100,
        }
    )
    gate = asyncio.Event()
    calls: Counter[str] = Counter()

    async def held_until_the_gate_opens(
        session: AsyncSession, envelope: Envelope, payload: WidgetMade
    ) -> None:
        await gate.wait()
        await writer(schema, "w", calls).handler(session, envelope, payload)

    blocked = reader(
        cfg,
        sessions,
        schema,
        unique("slow"),
        [topic],
        Subscription(handler=held_until_the_gate_opens, model=WidgetMade),
    )
    await produce(settings, topic, [made(f"HC-{n}", f"b{n}").to_record() for n in range(40)])
    group = ConsumerGroup(cfg, group_id=unique("group"), readers=[blocked])
    async with running(group):
        consumer = group.consumer
        assert consumer is not None
        await eventually(lambda: _assigned(consumer, 4), what="the four partitions assigned")
        await asyncio.sleep(1.5)  # many polls: a group without the limit fetches all 40
        fetched = sum([await consumer.position(tp) for tp in consumer.assignment()])
        # At most the limit, plus one fetch past it (the fetch that reached it).
        assert 1 <= fetched <= 4 + 3 - 1, fetched
        assert group._all_paused == (paused_after_s < 1.5)  # the path this case is about
        gate.set()
        await eventually(
            lambda: _has(engine, schema, {f"w:b{n}" for n in range(40)}), what="every record"
        )
    assert len(calls) == 40 and set(calls.values()) == {1}, calls
    assert await read_topic(settings, dlq, idle=0.5) == []


async def _assigned(consumer: AIOKafkaConsumer, partitions: int) -> bool:
    return len(consumer.assignment()) == partitions


async def test_a_lingering_group_applies_what_arrived_meanwhile_in_one_batch(
    settings: CommonSettings,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    """`consumer_linger_ms` (intake's view of its cases): events a moment apart, of different
    partitions, reach the reader as one batch, one transaction, instead of one each; and
    every record is applied once."""
    topic, dlq = await make_topic("linger", partitions=2), await make_topic("dlq")
    cfg = settings.model_copy(update={"dlq_topic": dlq, "consumer_linger_ms": 2000})
    batches: list[list[str]] = []

    async def take(session: AsyncSession, events: Sequence[tuple[Envelope, Any]]) -> None:
        batches.append([payload.wid for _, payload in events])

    lingering = ConsumerRunner(
        cfg,
        name=unique("linger"),
        topics=[topic],
        subscriptions={MADE: Subscription(handler=_never, model=WidgetMade)},
        sessions=sessions,
        schema=schema,
        batch_handler=take,
    )
    async with running(ConsumerGroup(cfg, group_id=unique("group"), readers=[lingering])):
        await asyncio.sleep(0.5)  # joined and polling, nothing to read
        await produce(settings, topic, [made("HC-1", "first").to_record()])
        await asyncio.sleep(0.2)  # fetched by now: the group lingers
        await produce(settings, topic, [made("HC-2", "second").to_record()])
        await eventually(lambda: _taken(batches, 2), what="both records")
    assert [sorted(b) for b in batches] == [["first", "second"]]


async def _never(session: AsyncSession, envelope: Envelope, payload: Any) -> None:
    raise AssertionError("a reader with a batch handler takes its events as a batch")


async def _taken(batches: list[list[str]], count: int) -> bool:
    return sum(len(b) for b in batches) >= count
