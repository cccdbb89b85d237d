"""(c) The runtime's own cost per event (issue 18, item 3): CPU of services/common alone.

Budgets: <= 0.15 ms of CPU per applied event, <= 0.1 ms per published event. Everything runs in
the bench's one process against the real Kafka and PostgreSQL, so the CPU its event loop's
thread spends over a window (`time.thread_time()`; the whole process's, which adds the progress
bar's render thread, is kept beside it) is the runtime's cost and nothing else's, and stays
steady on a busy machine (it counts CPU used, not time waited):

- applied: a `ConsumerRunner` built as `ServiceRuntime.consume` builds it, over a topic of its
  own, with a handler that does nothing: what is left is the runtime (fetch, parse, validation
  of the payload model, inbox row, transaction, offsets). The events (gov.case.routed.v1 with
  about 1 KB of data) are produced by a child process, whose CPU is not ours. Two regimes:
  `backlog` (all produced first, applied in big batches; the window includes the group join)
  and `paced` (produced at a rate while the runner applies them: batches of about one event,
  the per-event worst case; the window starts once the group has applied a first event).
- published: the transactional outbox, in two windows: `outbox writes` (the event's envelope
  built as `ServiceRuntime.emit` builds it, `Outbox.add` in a `unit_of_work` of its own, one
  event per transaction) and `relay` (`OutboxRelay` publishing those rows and deleting them).

Tracing is as in the services (`TracingSettings`: spans made, recorded only when exported
(`TONGBAN_OTLP_ENDPOINT`), none with `TONGBAN_TRACING_ENABLED=false`). The schema
`bench_runtime_<run>` and the topics `bench.<run>.*` are dropped at the end.
"""

from __future__ import annotations

import asyncio
import cProfile
import hashlib
import multiprocessing
import multiprocessing.process
import multiprocessing.synchronize
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from contracts.common import (
    Applicant,
    Application,
    Category,
    Channel,
    Delivery,
    DeliveryMethod,
    ItemSnapshot,
    Level,
    Material,
    Mode,
    Route,
)
from contracts.events import CaseRouted
from services.common.consumer import ConsumerRunner, Subscription
from services.common.db import (
    asyncpg_dsn,
    create_runtime_schema,
    make_engine,
    make_sessionmaker,
    unit_of_work,
)
from services.common.envelope import Envelope
from services.common.kafka import TopicSpec, client_options, ensure_topics, make_producer
from services.common.outbox import Outbox, OutboxRelay
from services.common.settings import CommonSettings
from services.common.tracing import TracingSettings, make_provider, use_provider

# Issue 18, item 3: CPU of the runtime per event, and per HTTP submission (not measured here).
BUDGET_MS = {"applied": 0.15, "published": 0.1, "http": 1.0}

ROUTED_AT = datetime(2026, 9, 29, 8, 30, tzinfo=UTC)

Progress = Callable[[str, int, int], None]

# The write figure again with many events a transaction: what Outbox.add and its flush cost per
# event once the transaction's own cost is shared (a handler's transaction writes state too).
BATCHED_WRITES = "published: outbox writes, batched"
# Intake's CPU per HTTP submission (services/bench/submission.py), when measured.
HTTP_SUBMISSION = "http: submission (intake)"


@dataclass(frozen=True)
class RuntimeConfig:
    bootstrap: str
    database_url: str
    run_id: str
    events: int = 5_000  # backlog regime
    paced_events: int = 500
    paced_rate: float = 100.0
    idle_seconds: float = 2.0  # the paced group's idle CPU, measured before its events come
    outbox_events: int = 2_000
    outbox_per_transaction: int = 100  # a second write figure: the cost beside the transaction's
    payload_bytes: int = 1_024  # size of the event's `data` (JSON), at least
    partitions: int = 12
    timeout: float = 120.0  # max s for one regime to finish
    # cProfile of each window's event loop thread into this folder (`<figure>.pstats`); the
    # profiler's own cost then inflates the figures, so the result says it was on.
    profile_dir: str | None = None

    @property
    def schema(self) -> str:
        return f"bench_runtime_{self.run_id}"

    def topic(self, name: str) -> str:
        return f"bench.{self.run_id}.{name}"

    @property
    def topics(self) -> list[str]:
        return [self.topic(n) for n in ("backlog", "paced", "published", "dlq")]

    def profile(self, figure: str) -> Path | None:
        if self.profile_dir is None:
            return None
        return Path(self.profile_dir) / (re.sub(r"[^a-z0-9]+", "-", figure).strip("-") + ".pstats")

    def settings(self) -> CommonSettings:
        """The services' settings from the environment, on this run's broker, database and
        dead-letter topic (a poison record of the bench stays in the bench)."""
        return CommonSettings(
            service="bench-runtime",
            kafka_bootstrap=self.bootstrap,
            database_url=self.database_url,
            kafka_partitions=self.partitions,
            dlq_topic=self.topic("dlq"),
        )


def new_run_id() -> str:
    return uuid.uuid4().hex[:8]


# -- the event (pure) ------------------------------------------------------------------------------


def routed_payload(case_id: str, data_bytes: int = 1_024) -> CaseRouted:
    """A gov.case.routed.v1 as routing emits it, with materials added until its JSON `data`
    is at least `data_bytes` long (a counter case with a handful of documents is ~1 KB)."""
    materials: list[Material] = []
    while True:
        payload = CaseRouted(
            case_id=case_id,
            route=Route(
                path=Mode.delegated,
                level=Level.district,
                handled_by="YZ01-MKT",
                same_city=False,
                rule="R5-delegated",
                catalog_version=3,
                explanation="delegated to the district market bureau",
                time_limit_days=5,
                intake_office="YZ01-DC",
                inputs={"mode": "delegated", "division": "YZ01", "office": "YZ01-DC"},
            ),
            item=ItemSnapshot(
                code="MKT-0001",
                name="食品经营许可",
                instant=False,
                time_limit_days=5,
                result_kind="licence",
                e_license=True,
                license_type="food_business",
            ),
            application=Application(
                item_code="MKT-0001",
                channel=Channel.counter,
                office_code="YZ01-DC",
                applicant=Applicant(
                    category=Category.enterprise,
                    name="云州食品有限公司",
                    id_number="91310000MA1FL4T22B",
                    division_code="YZ01",
                ),
                materials=materials,
                delivery=Delivery(method=DeliveryMethod.postal, address="云州市东湖区湖滨路 1 号"),
            ),
            submitted_at=ROUTED_AT - timedelta(seconds=1),
        )
        if len(payload.model_dump_json()) >= data_bytes:
            return payload
        n = len(materials) + 1
        digest = hashlib.sha256(f"{case_id}/{n}".encode()).hexdigest()
        materials.append(Material(code=f"M{n:02d}", sha256=digest))


def routed_envelope(payload: CaseRouted) -> Envelope:
    """The envelope `ServiceRuntime.emit` makes of a routed payload (without a trace)."""
    return Envelope(
        type=CaseRouted.TYPE,
        source="/tongban/routing",
        subject=payload.case_id,
        data=payload.model_dump(mode="json"),
        time=ROUTED_AT,
    )


def case_id(run_id: str, regime: str, n: int) -> str:
    return f"YZ-{run_id}-{regime}-{n:06d}"


# -- figures (pure) --------------------------------------------------------------------------------


def per_event_ms(cpu_s: float, events: int) -> float | None:
    return round(cpu_s * 1000 / events, 4) if events > 0 else None


def window_figures(cpu_s: float, wall_s: float, events: int, **extra: Any) -> dict[str, Any]:
    """One measured window: CPU (of the event loop's thread) and wall time, per event."""
    return {
        "events": events,
        "cpu_s": round(cpu_s, 4),
        "wall_s": round(wall_s, 3),
        "cpu_ms_per_event": per_event_ms(cpu_s, events),
        "events_per_s": round(events / wall_s, 1) if wall_s > 0 else None,
        **extra,
    }


def idle_cpu_ms_per_s(cpu_s: float, wall_s: float) -> float | None:
    return round(cpu_s * 1000 / wall_s, 3) if wall_s > 0 else None


def budget_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each measured figure beside its budget of issue 18 (ratio = figure / budget: <= 1 is
    within it)."""
    rows = []
    for name, kind in (
        ("applied, backlog", "applied"),
        ("applied, paced", "applied"),
        ("published: outbox writes", "published"),
        (BATCHED_WRITES, "published"),
        ("published: relay", "published"),
        ("published: writes + relay", "published"),
        (HTTP_SUBMISSION, "http"),
    ):
        figures = result.get("figures", {}).get(name)
        if figures is None:
            continue
        value = figures["cpu_ms_per_event"]
        budget = BUDGET_MS[kind]
        rows.append(
            {
                "figure": name,
                "events": figures["events"],
                "events_per_batch": figures.get("events_per_batch"),
                "cpu_ms_per_event": value,
                "budget_ms": budget,
                "ratio": round(value / budget, 2) if value is not None else None,
            }
        )
    return rows


def published_total(writes: dict[str, Any], relay: dict[str, Any]) -> dict[str, Any]:
    """A published event costs its outbox write and its relay: the sum per event."""
    events = min(writes["events"], relay["events"])
    cpu_s = writes["cpu_s"] * events / writes["events"] + relay["cpu_s"] * events / relay["events"]
    return window_figures(cpu_s, writes["wall_s"] + relay["wall_s"], events)


# -- the producer (a child process: its CPU is not the runtime's) --------------------------------


@dataclass(frozen=True)
class Production:
    """What the child produces: `count` events on the regime's topic, at `rate`/s (0: all at
    once)."""

    regime: str
    count: int
    rate: float = 0.0


def producer_process(
    config: dict[str, Any],
    production: Production,
    ready: multiprocessing.synchronize.Event,
    go: multiprocessing.synchronize.Event,
) -> None:
    """Process entry point (spawned). Paced (`rate` > 0): one warm-up event first (so the
    group has joined before the window opens), `ready`, wait for `go`, then `count` events at
    `rate`/s, open loop. Backlog (`rate` 0): `count` events at once, then exit."""
    asyncio.run(_produce(RuntimeConfig(**config), production, ready, go))


async def _produce(
    cfg: RuntimeConfig,
    production: Production,
    ready: multiprocessing.synchronize.Event,
    go: multiprocessing.synchronize.Event,
) -> None:
    regime, count, rate = production.regime, production.count, production.rate
    topic = cfg.topic(regime)
    producer = make_producer(cfg.settings(), client_id=f"bench-runtime-{regime}")
    await producer.start()
    try:
        # Built before sending: a paced send then costs only its enqueue.
        records = [
            routed_envelope(routed_payload(case_id(cfg.run_id, regime, n), cfg.payload_bytes))
            for n in range(count + (1 if rate > 0 else 0))
        ]
        acks = []
        if rate > 0:
            key, value, headers = records.pop(0).to_record()
            await producer.send_and_wait(topic, key=key, value=value, headers=headers)
            ready.set()
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
        started = time.monotonic()
        for n, envelope in enumerate(records):
            if rate > 0:
                await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
            key, value, headers = envelope.to_record()
            acks.append(await producer.send(topic, key=key, value=value, headers=headers))
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


def _spawn_producer(
    cfg: RuntimeConfig, production: Production
) -> tuple[multiprocessing.process.BaseProcess, Any, Any]:
    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    process = ctx.Process(
        target=producer_process,
        args=(asdict(cfg), production, ready, go),
        name=f"bench-runtime-{production.regime}",
        daemon=True,
    )
    process.start()
    return process, ready, go


async def _join(process: multiprocessing.process.BaseProcess, timeout: float) -> None:
    await asyncio.to_thread(process.join, timeout)
    if process.is_alive():
        process.terminate()
        raise RuntimeError(f"{process.name} did not finish in {timeout:g} s")
    if process.exitcode != 0:
        raise RuntimeError(f"{process.name} failed (exit code {process.exitcode})")


async def _wait_event(event: Any, timeout: float, what: str) -> None:
    if not await asyncio.to_thread(event.wait, timeout):
        raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")


# -- measuring -------------------------------------------------------------------------------------


@contextmanager
def cpu_window(profile: Path | None = None) -> Iterator[dict[str, float]]:
    """CPU and wall time over the block: of the event loop's thread (`cpu_s`, the figure:
    the runtime's work, aiokafka, asyncpg and SQLAlchemy's greenlets, all runs there) and of
    the whole process (`process_cpu_s`, which also holds the progress bar's render thread).
    With `profile`, that thread's cProfile statistics are written there."""
    spent: dict[str, float] = {}
    profiler = cProfile.Profile() if profile is not None else None
    cpu0, process0, wall0 = time.thread_time(), time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    try:
        yield spent
    finally:
        if profiler is not None:
            profiler.disable()
        spent["cpu_s"] = time.thread_time() - cpu0
        spent["process_cpu_s"] = time.process_time() - process0
        spent["wall_s"] = time.perf_counter() - wall0
        if profiler is not None and profile is not None:
            profile.parent.mkdir(parents=True, exist_ok=True)
            profiler.dump_stats(profile)


class NoopHandler:
    """The handler of the applied figure: does nothing but count the events it was given, and
    say when it has seen `target` of them (the bench waits without polling)."""

    def __init__(self, target: int) -> None:
        self.applied = 0
        self.target = target
        self.reached = asyncio.Event()

    async def __call__(self, session: AsyncSession, envelope: Envelope, payload: Any) -> None:
        self.applied += 1
        if self.applied >= self.target:
            self.reached.set()


def applying_runner(
    settings: CommonSettings,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
    topic: str,
    handler: NoopHandler,
) -> ConsumerRunner:
    """A ConsumerRunner as `ServiceRuntime.consume(topic, subscriptions={CaseRouted: ...})`
    builds it."""
    return ConsumerRunner(
        settings,
        name=f"bench-runtime-{topic.rsplit('.', 1)[-1]}",
        topics=[topic],
        subscriptions={CaseRouted.TYPE: Subscription(handler, CaseRouted)},
        sessions=sessions,
        schema=schema,
    )


def _batches(runner: ConsumerRunner) -> float:
    """How many batches the runner has applied (its duration histogram's count)."""
    count = REGISTRY.get_sample_value(
        "tongban_consumer_batch_duration_seconds_count",
        {"service": runner.settings.service, "consumer": runner.name},
    )
    return count or 0.0


async def _until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll a cheap (async) predicate every `interval` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


def _processed(runner: ConsumerRunner) -> float:
    """How many events the runner has counted applied: it counts a batch's events after its
    commit, and then records the batch (`_batches`) before it next yields to the loop."""
    return sum(
        REGISTRY.get_sample_value(
            "tongban_events_consumed_total",
            {
                "service": runner.settings.service,
                "consumer": runner.name,
                "topic": topic,
                "outcome": "processed",
            },
        )
        or 0.0
        for topic in runner.topics
    )


async def _applied(
    handler: NoopHandler,
    db: asyncpg.Connection,
    schema: str,
    runner: ConsumerRunner,
    *,
    phase: str,
    total: int,
    already: int,
    timeout: float,
    on_progress: Progress,
) -> None:
    """Until the handler has seen every event and their inbox rows are committed; progress
    four times a second (the handler's event ends the wait, not a poll)."""

    counted = _processed(runner)  # before any of these events (earlier runs' included)

    async def tick() -> None:
        while True:
            on_progress(phase, min(handler.applied - already, total), total)
            await asyncio.sleep(0.25)

    ticker = asyncio.create_task(tick())
    try:
        await asyncio.wait_for(handler.reached.wait(), timeout)
    except TimeoutError:
        raise RuntimeError(f"timed out after {timeout:g} s waiting for {phase}") from None
    finally:
        ticker.cancel()
    on_progress(phase, total, total)
    await _until(lambda: _all_in(db, schema, runner.name, already + total), timeout, "inbox rows")
    # The rows are committed before the runner counts them: its batch figures follow.
    await _until(lambda: _processed(runner) >= counted + total, timeout, "the batches counted")


async def inbox_rows(conn: asyncpg.Connection, schema: str, consumer: str) -> int:
    count: int = await conn.fetchval(
        f'SELECT count(*) FROM "{schema}".inbox WHERE consumer = $1', consumer
    )
    return count


async def _all_in(db: asyncpg.Connection, schema: str, consumer: str, n: int) -> bool:
    return await inbox_rows(db, schema, consumer) >= n


async def outbox_rows(conn: asyncpg.Connection, schema: str) -> int:
    count: int = await conn.fetchval(f'SELECT count(*) FROM "{schema}".outbox')
    return count


async def _applied_backlog(
    cfg: RuntimeConfig,
    sessions: async_sessionmaker[AsyncSession],
    db: asyncpg.Connection,
    on_progress: Progress,
) -> dict[str, Any]:
    n = cfg.events
    process, _ready, _go = _spawn_producer(cfg, Production("backlog", n))
    on_progress("produce backlog", 0, n)
    await _join(process, cfg.timeout)
    on_progress("produce backlog", n, n)
    handler = NoopHandler(target=n)
    runner = applying_runner(cfg.settings(), sessions, cfg.schema, cfg.topic("backlog"), handler)
    batches_before = _batches(runner)
    # The window includes the runner's start and group join: a few ms, spread over the backlog.
    with cpu_window(cfg.profile("applied, backlog")) as spent:
        task = asyncio.create_task(runner.run())
        await _applied(
            handler,
            db,
            cfg.schema,
            runner,
            phase="applied, backlog",
            total=n,
            already=0,
            timeout=cfg.timeout,
            on_progress=on_progress,
        )
    batches = _batches(runner) - batches_before
    runner.stop()
    await asyncio.wait_for(task, 30)
    return window_figures(
        spent["cpu_s"],
        spent["wall_s"],
        n,
        process_cpu_s=round(spent["process_cpu_s"], 4),
        inbox_rows=await inbox_rows(db, cfg.schema, runner.name),
        batches=int(batches),
        events_per_batch=round(n / batches, 1) if batches else None,
    )


async def _applied_paced(
    cfg: RuntimeConfig,
    sessions: async_sessionmaker[AsyncSession],
    db: asyncpg.Connection,
    on_progress: Progress,
) -> dict[str, Any]:
    n = cfg.paced_events
    handler = NoopHandler(target=1)  # the warm-up event first
    runner = applying_runner(cfg.settings(), sessions, cfg.schema, cfg.topic("paced"), handler)
    task = asyncio.create_task(runner.run())
    process, ready, go = _spawn_producer(cfg, Production("paced", n, cfg.paced_rate))
    try:
        await _wait_event(ready, cfg.timeout, "the paced producer")
        await asyncio.wait_for(handler.reached.wait(), cfg.timeout)
        await _until(lambda: _all_in(db, cfg.schema, runner.name, 1), cfg.timeout, "its row")
        await _until(lambda: _processed(runner) >= 1, cfg.timeout, "its batch counted")
        # The group has joined and applied the warm-up: the window holds the steady state.
        handler.target, handler.reached = n + 1, asyncio.Event()
        with cpu_window() as idle:
            await asyncio.sleep(cfg.idle_seconds)
        batches_before = _batches(runner)
        with cpu_window(cfg.profile("applied, paced")) as spent:
            go.set()
            await _applied(
                handler,
                db,
                cfg.schema,
                runner,
                phase="applied, paced",
                total=n,
                already=1,
                timeout=cfg.timeout + n / cfg.paced_rate,
                on_progress=on_progress,
            )
        batches = _batches(runner) - batches_before
        await _join(process, cfg.timeout)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 30)
        if process.is_alive():
            process.terminate()
    return window_figures(
        spent["cpu_s"],
        spent["wall_s"],
        n,
        process_cpu_s=round(spent["process_cpu_s"], 4),
        inbox_rows=await inbox_rows(db, cfg.schema, runner.name) - 1,  # not the warm-up's
        rate=cfg.paced_rate,
        # What the runner costs with nothing to apply (polls, heartbeats): part of the figure.
        idle_cpu_ms_per_s=idle_cpu_ms_per_s(idle["cpu_s"], idle["wall_s"]),
        batches=int(batches),
        events_per_batch=round(n / batches, 2) if batches else None,
    )


async def _outbox_writes(
    cfg: RuntimeConfig,
    sessions: async_sessionmaker[AsyncSession],
    on_progress: Progress,
    *,
    per_transaction: int = 1,
    phase: str = "published: outbox writes",
) -> dict[str, Any]:
    """`outbox_events` events, `per_transaction` to a `unit_of_work`, after a few outside the
    window (the pool's connections opened, the statement prepared: the steady state)."""
    n = cfg.outbox_events
    warm_up = min(50, max(1, n // 10))
    outbox = Outbox(cfg.schema)
    topic = cfg.topic("published")
    first = (0 if per_transaction == 1 else warm_up + n) + warm_up
    # The payloads are the handler's work (its domain logic): made before the window.
    payloads = [
        routed_payload(case_id(cfg.run_id, "published", first - warm_up + i), cfg.payload_bytes)
        for i in range(warm_up + n)
    ]

    async def write(chunk: list[CaseRouted]) -> None:
        async with unit_of_work(sessions) as session:
            for payload in chunk:
                await outbox.add(session, topic, routed_envelope(payload))

    for payload in payloads[:warm_up]:
        await write([payload])
    measured = payloads[warm_up:]
    with cpu_window(cfg.profile(phase)) as spent:
        for i in range(0, n, per_transaction):
            await write(measured[i : i + per_transaction])
            if i % 100 < per_transaction:
                on_progress(phase, i, n)
    on_progress(phase, n, n)
    return window_figures(
        spent["cpu_s"],
        spent["wall_s"],
        n,
        process_cpu_s=round(spent["process_cpu_s"], 4),
        transactions=-(-n // per_transaction),
        events_per_transaction=per_transaction,
        warm_up=warm_up,
    )


async def _relay(
    cfg: RuntimeConfig, db: asyncpg.Connection, on_progress: Progress
) -> dict[str, Any]:
    """The relay publishing every row the writes left (theirs and the warm-up's) and deleting
    them; the window includes its start (connection, advisory lock, producer)."""
    n = await outbox_rows(db, cfg.schema)
    relay = OutboxRelay(cfg.settings(), schema=cfg.schema)
    with cpu_window(cfg.profile("published: relay")) as spent:
        task = asyncio.create_task(relay.run())

        def all_published() -> bool:
            on_progress("published: relay", min(relay.published, n), n)
            return relay.published >= n

        await _until(all_published, cfg.timeout, "the relay", interval=0.05)
        await _until(lambda: _outbox_empty(db, cfg.schema), cfg.timeout, "the rows deleted")
    relay.stop()
    await asyncio.wait_for(task, 30)
    return window_figures(
        spent["cpu_s"],
        spent["wall_s"],
        relay.published,
        process_cpu_s=round(spent["process_cpu_s"], 4),
        on_topic=await records_on(cfg.settings(), cfg.topic("published")),
        rows_left=await outbox_rows(db, cfg.schema),
    )


async def _outbox_empty(db: asyncpg.Connection, schema: str) -> bool:
    return await outbox_rows(db, schema) == 0


async def records_on(settings: CommonSettings, topic: str) -> int:
    """How many records `topic` holds (the sum of its partitions' end offsets)."""
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return sum(ends.values())
    finally:
        await consumer.stop()


# -- the bench -------------------------------------------------------------------------------------


async def prepare(cfg: RuntimeConfig, engine: AsyncEngine) -> None:
    """This run's schema (the runtime tables, as every service's first migration makes
    them) and topics."""
    async with engine.begin() as conn:
        await create_runtime_schema(conn, cfg.schema)
    await ensure_topics(cfg.settings(), [TopicSpec(t) for t in cfg.topics])


async def clean_up(cfg: RuntimeConfig, engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA IF EXISTS "{cfg.schema}" CASCADE'))
    admin = AIOKafkaAdminClient(**client_options(cfg.settings()))
    await admin.start()
    try:
        await admin.delete_topics(cfg.topics)
    finally:
        await admin.close()


@contextmanager
def services_tracing() -> Iterator[bool]:
    """Spans as the services make them (TONGBAN_TRACING_*): recorded only when exported
    (services/common/tracing.py: configure_tracing), never exported from here."""
    settings = TracingSettings(service="bench-runtime")
    exported = bool(settings.otlp_endpoint)
    provider = (
        make_provider(settings.model_copy(update={"otlp_endpoint": None}), record=exported)
        if settings.tracing_enabled
        else None
    )
    use_provider(provider)
    try:
        yield provider is not None
    finally:
        use_provider(None)
        if provider is not None:
            provider.shutdown()


async def run_runtime(
    cfg: RuntimeConfig,
    *,
    on_progress: Progress = lambda _phase, _done, _total: None,
    keep: bool = False,
) -> dict[str, Any]:
    """Measure every figure; the schema and topics are dropped at the end unless `keep`."""
    settings = cfg.settings()
    engine = make_engine(settings, pool_size=2)
    sessions = make_sessionmaker(engine)
    db = await asyncpg.connect(asyncpg_dsn(cfg.database_url))
    figures: dict[str, Any] = {}
    try:
        await prepare(cfg, engine)
        with services_tracing() as traced:
            if cfg.events > 0:
                figures["applied, backlog"] = await _applied_backlog(cfg, sessions, db, on_progress)
            if cfg.paced_events > 0:
                figures["applied, paced"] = await _applied_paced(cfg, sessions, db, on_progress)
            if cfg.outbox_events > 0:
                writes = await _outbox_writes(cfg, sessions, on_progress)
                figures["published: outbox writes"] = writes
                if cfg.outbox_per_transaction > 1:
                    figures[BATCHED_WRITES] = await _outbox_writes(
                        cfg,
                        sessions,
                        on_progress,
                        per_transaction=cfg.outbox_per_transaction,
                        phase=BATCHED_WRITES,
                    )
                relay = await _relay(cfg, db, on_progress)
                figures["published: relay"] = relay
                figures["published: writes + relay"] = published_total(writes, relay)
    finally:
        await db.close()
        if not keep:
            await clean_up(cfg, engine)
        await engine.dispose()
    result: dict[str, Any] = {
        "config": asdict(cfg) | {"database_url": None},
        "schema": cfg.schema,
        "traced": traced,
        "profiled": cfg.profile_dir is not None,  # figures inflated by the profiler
        "consumer_max_records": settings.consumer_max_records,
        "outbox_batch_size": settings.outbox_batch_size,
        "data_bytes": len(
            routed_payload(case_id(cfg.run_id, "x", 0), cfg.payload_bytes).model_dump_json()
        ),
        "figures": figures,
    }
    result["budget"] = budget_rows(result)
    return result
