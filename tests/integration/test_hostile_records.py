"""Hostile records on the real broker and database: every one ends applied or dead-lettered,
and the partition moves on (issue 13, point 1).

The consumer runner, a real topic and dead-letter topic, PostgreSQL: first the cases that
once stalled a partition, one by one, then hypothesis throws generated records at it (ids of
any length and bytes, NUL and lone surrogates in headers or JSON, non-UTF-8 headers, missing
or repeated headers, JSON that is not an object or cannot be stored) and fails as soon as a
good record produced after them is not applied within a bounded wait.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from contracts.events import CatalogPublished
from services.common.catalog_follower import CatalogFollower
from services.common.consumer import ConsumerRunner, Subscription
from services.common.db import inbox_key
from services.common.envelope import Envelope
from services.common.kafka import TopicSpec, ensure_topics
from services.common.settings import CommonSettings
from tests.conftest import MakeTopic, eventually, unique
from tests.integration.test_consumer import (
    WidgetMade,
    has_widget,
    made,
    runner_for,
    running,
    widget_writer,
    widgets,
)
from tests.kafka_helpers import header, produce, read_topic

pytestmark = pytest.mark.integration

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


async def inbox_keys(engine: AsyncEngine, schema: str) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(text(f'SELECT event_id FROM "{schema}".inbox'))
        return [r[0] for r in rows]


async def test_event_ids_of_any_length_are_applied_once(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    """An id longer than the inbox's old varchar(64) put consumers into a crash loop."""
    topic, dlq = await make_topic("in"), await make_topic("dlq")
    calls: Counter[str] = Counter()
    ids = {"w-65": "i" * 65, "w-3k": "身份" * 1500, "w-200k": noise(7, 200_000)}
    events = [made("HC-L", wid, id=event_id) for wid, event_id in ids.items()]
    # Each twice (same batch), then once more in a later batch after a normal event.
    await produce(settings, topic, [e.to_record() for e in events for _ in range(2)])
    async with running(
        runner_for(settings, sessions, schema, topic, widget_writer(schema, calls), dlq=dlq)
    ):
        await eventually(lambda: has_widget(engine, schema, "w-200k"), what="long ids applied")
        await produce(
            settings, topic, [*(e.to_record() for e in events), made("HC-L", "w-end").to_record()]
        )
        await eventually(lambda: has_widget(engine, schema, "w-end"), what="the next record")
    assert dict(calls) == {"w-65": 1, "w-3k": 1, "w-200k": 1, "w-end": 1}
    keys = await inbox_keys(engine, schema)
    assert sorted(k for k in keys if k.startswith("sha256:")) == sorted(
        inbox_key(i) for i in ids.values()
    )
    assert await read_topic(settings, dlq, idle=0.5) == []


async def test_a_value_too_long_for_its_column_is_dead_lettered_at_once(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    """A handler storing the subject (the case id) in a bounded column: a longer subject is
    a data error, the same on every attempt, so it is dead-lettered without retries."""
    topic, dlq = await make_topic("in"), await make_topic("dlq")
    async with engine.begin() as conn:
        await conn.execute(text(f'CREATE TABLE "{schema}".short_case (case_id varchar(20))'))
    calls: Counter[str] = Counter()

    async def store_case(session: AsyncSession, envelope: Envelope, payload: WidgetMade) -> None:
        calls[payload.wid] += 1
        await session.execute(
            text(f'INSERT INTO "{schema}".short_case VALUES (:case)'), {"case": envelope.subject}
        )

    long_subject = "HC-" + "9" * 200
    await produce(
        settings,
        topic,
        [
            made(long_subject, "w-long").to_record(),
            made("HC-OK", "w-ok").to_record(),
        ],
    )
    runner = runner_for(
        settings,
        sessions,
        schema,
        topic,
        Subscription(store_case, WidgetMade),
        dlq=dlq,
        consumer_handler_attempts=5,
    )
    async with running(runner):
        letters = await read_topic(settings, dlq, min_records=1, idle=0.5)
        await eventually(lambda: calls["w-ok"] >= 1, what="the next record")
    assert [header(r, "ce_subject") for r in letters] == [long_subject]
    reason = header(letters[0], "dlq_reason") or ""
    assert reason.startswith("unstorable: StringDataRightTruncationError [22001]"), reason
    assert long_subject not in reason  # no statement parameters in reasons
    assert calls["w-long"] <= 2, "a data error is not retried (fast path + one isolated try)"
    async with engine.connect() as conn:
        stored = (await conn.execute(text(f'SELECT case_id FROM "{schema}".short_case'))).all()
    assert [r[0] for r in stored] == ["HC-OK"]


async def test_a_dead_letter_bigger_than_the_limit_keeps_its_head_and_points_at_the_original(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    topic, dlq = await make_topic("in", partitions=1), await make_topic("dlq")
    key, _value, headers = made("HC-T", "w-x").to_record()
    huge = b"not json " * 20_000  # 180 kB, over the 16 KiB limit set below
    await produce(settings, topic, [(key, huge, headers), made("HC-T", "w-after").to_record()])
    async with running(
        runner_for(
            settings,
            sessions,
            schema,
            topic,
            widget_writer(schema),
            dlq=dlq,
            dlq_max_record_bytes=16 * 1024,
        )
    ):
        await eventually(lambda: has_widget(engine, schema, "w-after"), what="the next record")
        letters = await read_topic(settings, dlq, min_records=1, idle=0.5)
    assert len(letters) == 1
    letter = letters[0]
    assert letter.value is not None and 0 < len(letter.value) < 16 * 1024
    assert huge.startswith(letter.value)
    assert (header(letter, "dlq_truncated") or "").startswith("value: 180000 bytes, first ")
    assert (header(letter, "dlq_topic"), header(letter, "dlq_partition")) == (topic, "0")
    assert header(letter, "dlq_offset") == "0"
    assert header(letter, "ce_id") == dict(headers)["ce_id"].decode()


async def test_a_dead_letter_the_broker_refuses_is_sent_minimal_not_retried_forever(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    """The dead-letter topic takes less than the runner's limit (an operator's setting):
    the broker refuses the letter, the runner sends the minimal one and goes on."""
    topic = await make_topic("in", partitions=1)
    dlq = unique("dlq")
    await ensure_topics(
        settings, [TopicSpec(dlq, partitions=1, config={"max.message.bytes": "8192"})]
    )
    key, _value, headers = made("HC-R", "w-x").to_record()
    await produce(
        settings, topic, [(key, b"x" * 50_000, headers), made("HC-R", "w-after").to_record()]
    )
    async with running(
        runner_for(settings, sessions, schema, topic, widget_writer(schema), dlq=dlq)
    ):
        await eventually(lambda: has_widget(engine, schema, "w-after"), what="the next record")
        letters = await read_topic(settings, dlq, min_records=1, idle=0.5)
    assert len(letters) == 1
    letter = letters[0]
    assert letter.value == b""
    assert "the broker refused the letter" in (header(letter, "dlq_truncated") or "")
    assert (header(letter, "dlq_topic"), header(letter, "dlq_offset")) == (topic, "0")
    assert "not JSON" in (header(letter, "dlq_reason") or "")


# -- property test -------------------------------------------------------------------------------

ATTRIBUTES = (
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_subject",
    "ce_time",
    "ce_specversion",
    "content-type",
    "traceparent",
)


def noise(seed: int, length: int) -> str:
    """Text PostgreSQL cannot compress away (a long run of one character fits any index)."""
    out: list[str] = []
    block = str(seed).encode()
    for _ in range(length // 64 + 1):
        block = hashlib.sha256(block).digest()
        out.append(block.hex())
    return "".join(out)[:length]


def runs(longest: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds(
            lambda c, n: c * n,
            st.sampled_from(["x", "事", "\x00", "\ud800"]),
            st.integers(60, longest),
        ),
        st.builds(noise, st.integers(0, 2**32), st.integers(60, longest)),
    )


# Text of every kind: any code point (controls, noncharacters, lone surrogates included),
# long runs, and raw bytes that are not UTF-8 at all.
short_text = st.text(st.characters(codec=None, categories=None), max_size=30)
any_text = st.one_of(short_text, runs(120_000))
raw_bytes = st.one_of(
    any_text.map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=40),
)
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    short_text,
    runs(4000),
)
json_any = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@dataclass
class Hostile:
    """How one record departs from a valid widget event."""

    id_tail: bytes | None  # appended to the event's (unique) id
    headers: dict[str, Any]  # name -> "keep" | "drop" | bytes (replace) | ("twice", bytes)
    value: Any  # "keep" | bytes | ("data", note, seq) | ("json", anything)
    key: Any  # "keep" | None | bytes
    extra: list[tuple[str, bytes]] = field(default_factory=list)


hostile = st.builds(
    Hostile,
    id_tail=st.one_of(
        st.none(), runs(120_000).map(lambda s: s.encode("utf-8", "surrogatepass")), raw_bytes
    ),
    headers=st.dictionaries(
        st.sampled_from(ATTRIBUTES),
        st.one_of(
            st.just("drop"),
            raw_bytes,
            st.tuples(st.just("twice"), raw_bytes),
        ),
        max_size=3,
    ),
    value=st.one_of(
        st.just("keep"),
        st.binary(max_size=60),
        st.tuples(st.just("data"), json_any, st.integers(min_value=-(2**70), max_value=2**70)),
        st.tuples(st.just("json"), json_any),
        st.just(b"[" * 50_000),
    ),
    key=st.one_of(st.just("keep"), st.none(), raw_bytes),
    extra=st.lists(
        st.tuples(st.sampled_from(["x-note", "CE_ID", "ce_extra"]), raw_bytes), max_size=2
    ),
)


def build(spec: Hostile, run: str, n: int) -> tuple[str, Record]:
    """A widget event `h-<run>-<n>` bent by `spec`. Its id starts with a prefix unique to
    it, so no record is a duplicate of another and every one must be applied or
    dead-lettered."""
    wid = f"h-{run}-{n}"
    prefix = f"{run}-{n}-".encode()
    key, value, headers = made("HC-P", wid, id=prefix.decode()).to_record()
    out: list[tuple[str, bytes]] = []
    for name, raw in headers:
        if name == "ce_id" and spec.id_tail is not None:
            raw = raw + spec.id_tail
        change = spec.headers.get(name, "keep")
        if change == "keep":
            out.append((name, raw))
        elif isinstance(change, bytes):
            out.append((name, prefix + change if name == "ce_id" else change))
        elif isinstance(change, tuple):
            out.extend([(name, raw), (name, change[1])])
    out.extend(spec.extra)
    if spec.value != "keep":
        if isinstance(spec.value, bytes):
            value = spec.value
        elif spec.value[0] == "data":
            data = {"wid": wid, "seq": spec.value[2], "note": spec.value[1]}
            value = json.dumps(data, ensure_ascii=True).encode()  # \u0000, \ud800 escapes
        else:
            value = json.dumps(spec.value[1], ensure_ascii=bool(n % 2)).encode(
                "utf-8", "surrogatepass"
            )
    if spec.key != "keep":
        key = spec.key
    return wid, (key, value, out)


class Probe:
    """A runner on a one-partition topic, and what reached its dead-letter topic."""

    def __init__(self, settings: CommonSettings, topic: str, dlq: str) -> None:
        self.settings = settings
        self.topic = topic
        self.dlq = dlq
        self.dead: dict[int, str] = {}  # original offset -> reason
        self.producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers, enable_idempotence=True
        )
        self.reader = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            group_id=None,
        )

    async def send(self, records: Sequence[Record]) -> list[int]:
        offsets = []
        for key, value, headers in records:
            sent = await self.producer.send_and_wait(
                self.topic, key=key, value=value, headers=headers, partition=0
            )
            offsets.append(sent.offset)
        return offsets

    async def read_dead(self) -> None:
        batch = await self.reader.getmany(timeout_ms=100)
        for records in batch.values():
            for r in records:
                self.dead[int(header(r, "dlq_offset") or -1)] = header(r, "dlq_reason") or ""


@pytest.fixture
async def probe(
    settings: CommonSettings,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> AsyncIterator[tuple[Probe, asyncio.Task[None]]]:
    topic, dlq = await make_topic("in", partitions=1), await make_topic("dlq", partitions=1)
    probe = Probe(settings, topic, dlq)
    runner: ConsumerRunner = runner_for(
        settings,
        sessions,
        schema,
        topic,
        widget_writer(schema),
        dlq=dlq,
        consumer_handler_attempts=1,
        consumer_max_records=20,
    )
    await probe.producer.start()
    await probe.reader.start()
    probe.reader.assign([TopicPartition(dlq, 0)])
    await probe.reader.seek_to_beginning(TopicPartition(dlq, 0))
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(runner.ready.wait(), 30)
        yield probe, task
    finally:
        runner.stop()
        await asyncio.wait_for(task, 30)
        await probe.producer.stop()
        await probe.reader.stop()


@hypothesis_settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(specs=st.lists(hostile, min_size=1, max_size=4))
async def test_generated_hostile_records_never_stop_the_partition(
    probe: tuple[Probe, asyncio.Task[None]],
    engine: AsyncEngine,
    schema: str,
    specs: list[Hostile],
) -> None:
    checker, task = probe
    run = uuid.uuid4().hex[:8]
    built = [build(spec, run, n) for n, spec in enumerate(specs)]
    sentinel = f"s-{run}"
    offsets = await checker.send([r for _w, r in built] + [made("HC-P", sentinel).to_record()])

    async def moved_on() -> bool:
        assert not task.done(), f"the runner stopped: {task.exception()!r}"
        return await has_widget(engine, schema, sentinel)

    await eventually(moved_on, timeout=60, what="the good record after the hostile ones")
    applied = {w[0] for w in await widgets(engine, schema)}

    async def all_accounted() -> bool:
        await checker.read_dead()
        return all(
            (wid in applied) != (offset in checker.dead)
            for (wid, _r), offset in zip(built, offsets, strict=False)
        )

    await eventually(all_accounted, timeout=30, what="each hostile record applied xor dead")


class _NotUtf8Name(str):
    """A header name whose bytes on the wire are not UTF-8: no Java client writes one, but
    any raw producer can. aiokafka's own parser then fails the whole fetch."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe" + str(self).encode()


async def _produce_with_unreadable_header_name(
    settings: CommonSettings, topic: str, partition: int, record: Record
) -> int:
    """The record with a header name that is not UTF-8 added; its offset."""
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        batch = producer.create_batch()
        # The pure-Python builder writes whatever `encode` returns (the C one would refuse).
        batch._builder = _DefaultRecordBatchBuilderPy(
            2,
            0,
            is_transactional=0,
            producer_id=-1,
            producer_epoch=-1,
            base_sequence=0,
            batch_size=1 << 20,
        )
        key, value, headers = record
        assert batch.append(
            timestamp=None, key=key, value=value, headers=[*headers, (_NotUtf8Name("x"), b"1")]
        )
        meta = await (await producer.send_batch(batch, topic, partition=partition))
        return int(meta.offset)
    finally:
        await producer.stop()


async def test_a_record_the_kafka_client_cannot_parse_is_dead_lettered_by_reference(
    settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    make_topic: MakeTopic,
) -> None:
    """A header name that is not UTF-8 makes aiokafka's getmany raise for the whole fetch (and
    drop what it took from other partitions). The runner steps over exactly that record with a
    dead letter that names where it is, and applies every other record, on every partition."""
    topic, dlq = await make_topic("in", partitions=2), await make_topic("dlq")
    calls: Counter[str] = Counter()
    before = [made(f"HC-B{p}", f"w-before-{p}").to_record() for p in (0, 1)]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for p, (key, value, headers) in enumerate(before):
            await producer.send_and_wait(topic, value, key=key, headers=headers, partition=p)
    finally:
        await producer.stop()
    await _produce_with_unreadable_header_name(
        settings, topic, 0, made("HC-BAD", "w-bad").to_record()
    )
    after = [made(f"HC-A{n}", f"w-after-{n}").to_record() for n in range(6)]
    await produce(settings, topic, after)
    async with running(
        runner_for(settings, sessions, schema, topic, widget_writer(schema, calls), dlq=dlq)
    ) as runner:
        await eventually(
            lambda: has_widget(engine, schema, "w-after-5"), what="records after the bad one"
        )
        letters = await read_topic(settings, dlq, min_records=1, idle=0.5)
        for n in range(6):
            assert await has_widget(engine, schema, f"w-after-{n}")
        assert runner._consumer is not None
    assert calls["w-bad"] == 0
    assert {w for w in calls if calls[w] != 1} == set(), calls
    assert {f"w-before-{p}" for p in (0, 1)} <= set(calls)
    assert len(letters) == 1
    assert header(letters[0], "dlq_topic") == topic
    assert header(letters[0], "dlq_partition") == "0"
    assert header(letters[0], "dlq_offset") == "1"
    assert (header(letters[0], "dlq_reason") or "").startswith("unreadable:")


async def test_the_catalog_follower_steps_over_a_record_the_kafka_client_cannot_parse(
    settings: CommonSettings, make_topic: MakeTopic
) -> None:
    """Every process reads the whole catalog topic itself: an unparseable record there must
    not stop any of them from following the versions before and after it."""
    topic = await make_topic("catalog", partitions=1)

    def version(n: int) -> Record:
        published = CatalogPublished(version=n, loaded_at=datetime.now(UTC), catalog={})
        return Envelope(
            type="gov.catalog.published.v1",
            source="/tongban/routing",
            subject=f"catalog-{n}",
            data=published.model_dump(mode="json"),
        ).to_record()

    await produce(settings, topic, [version(1)])
    bad = await _produce_with_unreadable_header_name(settings, topic, 0, version(2))
    await produce(settings, topic, [version(3)])
    unreadable: list[tuple[int, str]] = []

    async def on_unreadable(record: Any, reason: str) -> None:
        unreadable.append((record.offset, reason))

    follower = CatalogFollower(
        settings, lambda published: published.version, on_unreadable=on_unreadable, topic=topic
    )
    await follower.start(timeout=30)
    follower.stop()
    await follower.run()
    assert sorted(follower.versions) == [1, 3]
    assert [(offset, reason.split(" ")[0]) for offset, reason in unreadable] == [
        (bad, "unreadable:")
    ]
