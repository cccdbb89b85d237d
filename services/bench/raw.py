"""(a) The raw limit: a minimal four-hop pipeline on the same Kafka and PostgreSQL.

Hop i (a process of its own) consumes `bench.<run>.hop<i>` in batches (`getmany`), writes one
state row and one inbox row per message in ONE transaction per batch (asyncpg, `unnest`),
produces every message to the next topic with an idempotent producer (tongban's own
`make_producer`/`make_consumer`, so the Kafka client settings are the same as the services'),
and commits the offsets after the database commit and the acks. Hop 4 produces to
`bench.<run>.done`, which the bench reads to time each message.

Two phases on the same workers: `paced` (an open-loop rate, for latency) and `burst` (N
messages at once, for the throughput ceiling). What tongban adds on top (outbox + relay,
validation, envelopes, HTTP) is what the (b)/(a) ratio measures.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import multiprocessing.process
import multiprocessing.synchronize
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.bench.procs import ProcessSampler, add_stack, cpu_deltas, per_unit, pg_counters
from services.bench.stats import completion_rate, latency_summary
from services.common.db import asyncpg_dsn
from services.common.kafka import (
    TopicSpec,
    client_options,
    ensure_topics,
    make_consumer,
    make_producer,
)
from services.common.settings import CommonSettings

SCHEMA = "bench_raw"
DDL = [
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.state (
        hop smallint NOT NULL,
        msg_id text NOT NULL,
        data jsonb NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (hop, msg_id))""",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.inbox (
        consumer varchar(128) NOT NULL,
        event_id varchar(64) NOT NULL,
        topic varchar(249) NOT NULL,
        processed_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (consumer, event_id))""",
]
INBOX_SQL = f"""
    INSERT INTO {SCHEMA}.inbox (consumer, event_id, topic)
    SELECT $1, e, $2 FROM unnest($3::text[]) AS e
    ON CONFLICT DO NOTHING RETURNING event_id"""
STATE_SQL = f"""
    INSERT INTO {SCHEMA}.state (hop, msg_id, data)
    SELECT $1, i, d::jsonb FROM unnest($2::text[], $3::text[]) AS u(i, d)
    ON CONFLICT (hop, msg_id) DO UPDATE SET data = excluded.data, updated_at = now()"""


@dataclass(frozen=True)
class RawConfig:
    bootstrap: str
    database_url: str
    run_id: str
    hops: int = 4
    partitions: int = 12
    max_records: int = 500
    poll_ms: int = 200
    # aiokafka's default, which tongban's make_consumer keeps; lower it to see what the broker's
    # long-poll costs in latency (aiokafka sends one fetch per broker at a time).
    fetch_max_wait_ms: int = 500

    def topic(self, hop: int) -> str:
        """Input topic of hop `hop` (1-based); hop `hops + 1` is the done topic."""
        return f"bench.{self.run_id}.hop{hop}" if hop <= self.hops else self.done_topic

    @property
    def done_topic(self) -> str:
        return f"bench.{self.run_id}.done"

    def settings(self, name: str) -> CommonSettings:
        return CommonSettings(
            service=name,
            kafka_bootstrap=self.bootstrap,
            database_url=self.database_url,
            kafka_partitions=self.partitions,
            consumer_max_records=self.max_records,
        )


# -- one hop (runs in its own process) ------------------------------------------------------------


def _consumer(
    settings: CommonSettings, topic: str, group_id: str, cfg: RawConfig
) -> AIOKafkaConsumer:
    """tongban's `make_consumer`, with the broker long-poll wait as a knob."""
    if cfg.fetch_max_wait_ms == 500:
        return make_consumer(settings, topic, group_id=group_id)
    return AIOKafkaConsumer(
        topic,
        **client_options(settings),
        group_id=group_id,
        client_id=settings.service,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=settings.consumer_max_records,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        fetch_max_wait_ms=cfg.fetch_max_wait_ms,
    )


def hop_process(
    config: dict[str, Any],
    hop: int,
    ready: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
) -> None:
    """Process entry point (spawned): run hop `hop` until `stop` is set."""
    asyncio.run(_hop(RawConfig(**config), hop, ready, stop))


async def _hop(
    cfg: RawConfig,
    hop: int,
    ready: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
) -> None:
    name = f"bench-raw-hop{hop}"
    settings = cfg.settings(name)
    source, target = cfg.topic(hop), cfg.topic(hop + 1)
    consumer = _consumer(settings, source, f"bench-raw-{cfg.run_id}-hop{hop}", cfg)
    producer = make_producer(settings, client_id=name)
    conn = await asyncpg.connect(asyncpg_dsn(cfg.database_url))
    await consumer.start()
    await producer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=cfg.poll_ms, max_records=cfg.max_records)
            if consumer.assignment() and not ready.is_set():
                ready.set()
            if not batch:
                continue
            records = [r for recs in batch.values() for r in recs]
            ids = [r.key.decode() for r in records]
            async with conn.transaction():
                fresh = {row[0] for row in await conn.fetch(INBOX_SQL, name, source, ids)}
                written = [(i, r.value.decode()) for i, r in zip(ids, records, strict=True)]
                written = [(i, v) for i, v in dict(written).items() if i in fresh]
                if written:
                    await conn.execute(
                        STATE_SQL, hop, [i for i, _ in written], [v for _, v in written]
                    )
            # Forward everything, duplicates included: the next hop's inbox drops them, and a
            # message whose commit happened but whose send did not is not lost.
            futures = [
                await producer.send(target, key=r.key, value=r.value, headers=r.headers)
                for r in records
            ]
            await asyncio.gather(*futures)
            await consumer.commit({tp: recs[-1].offset + 1 for tp, recs in batch.items() if recs})
    finally:
        await consumer.stop()
        await producer.stop()
        await conn.close()


# -- the bench -------------------------------------------------------------------------------------


async def prepare(cfg: RawConfig) -> None:
    """Fresh tables in schema bench_raw, and this run's topics."""
    conn = await asyncpg.connect(asyncpg_dsn(cfg.database_url))
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        for statement in DDL:
            await conn.execute(statement)
    finally:
        await conn.close()
    topics = [TopicSpec(cfg.topic(h)) for h in range(1, cfg.hops + 2)]
    await ensure_topics(cfg.settings("bench-raw"), topics)


async def delete_topics(cfg: RawConfig) -> None:
    admin = AIOKafkaAdminClient(**client_options(cfg.settings("bench-raw")))
    await admin.start()
    try:
        await admin.delete_topics([cfg.topic(h) for h in range(1, cfg.hops + 2)])
    finally:
        await admin.close()


class _DoneWatcher:
    """Reads the done topic from its start; latency = the done record's timestamp (set by hop
    N's producer) minus the injection time carried in the message."""

    def __init__(self, cfg: RawConfig) -> None:
        self.cfg = cfg
        self.done: dict[str, tuple[str, float, float]] = {}  # id -> (phase, t0, done at)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            **client_options(self.cfg.settings("bench-raw-watch")),
            enable_auto_commit=False,
            max_poll_records=2000,
        )
        await consumer.start()
        parts = [TopicPartition(self.cfg.done_topic, p) for p in range(self.cfg.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        self._consumer = consumer
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=100, max_records=2000)
            for records in batch.values():
                for r in records:
                    body = json.loads(r.value)
                    self.done.setdefault(
                        body["id"], (body["phase"], body["t0"], r.timestamp / 1000)
                    )

    def count(self, phase: str) -> int:
        return sum(1 for p, _, _ in self.done.values() if p == phase)

    def timings(self, phase: str) -> list[tuple[float, float]]:
        """(sent at, done at) of each message of `phase` that is through."""
        return [(t0, at) for p, t0, at in self.done.values() if p == phase]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._consumer is not None:
            await self._consumer.stop()


def _message(run_id: str, phase: str, n: int, pad: str) -> tuple[bytes, bytes]:
    msg_id = f"{run_id}-{phase}-{n}"
    body = {"id": msg_id, "phase": phase, "t0": time.time(), "pad": pad}
    return msg_id.encode(), json.dumps(body).encode()


async def _wait(
    predicate: Callable[[], bool], timeout: float, progress: Callable[[], None]
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress()
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return predicate()


async def run_raw(
    cfg: RawConfig,
    *,
    messages: int,
    paced_rate: float,
    paced_seconds: float,
    payload_bytes: int,
    timeout: float,
    run_dir: Path,
    on_progress: Callable[[str, int, int], None] = lambda phase, done, total: None,
) -> dict[str, Any]:
    await prepare(cfg)
    stop, readies, workers = _spawn_hops(cfg)
    sampler = ProcessSampler()
    watcher = _DoneWatcher(cfg)
    producer = make_producer(cfg.settings("bench-raw-inject"), client_id="bench-raw-inject")
    pad = "x" * payload_bytes
    result: dict[str, Any] = {"config": asdict(cfg), "payload_bytes": payload_bytes}
    try:
        await _hops_ready(readies, workers)
        await watcher.start()
        await producer.start()
        add_stack(
            sampler,
            run_dir,
            [(f"raw-hop{i + 1}", w.pid) for i, w in enumerate(workers) if w.pid is not None],
        )
        sampler.start()
        paced_total = await _paced_phase(
            cfg,
            producer,
            watcher,
            rate=paced_rate,
            seconds=paced_seconds,
            pad=pad,
            timeout=timeout,
            on_progress=on_progress,
        )
        burst = await _burst_phase(
            cfg,
            producer,
            watcher,
            sampler,
            messages=messages,
            pad=pad,
            timeout=timeout,
            on_progress=on_progress,
        )
        processes = await sampler.stop()
        paced = watcher.timings("paced")
        result |= {
            "paced": {
                "rate": paced_rate,
                "messages": paced_total,
                "completed": len(paced),
                "latency": latency_summary([max(0.0, at - t0) for t0, at in paced]),
            },
            "burst": _burst_figures(burst, watcher.timings("burst"), messages),
            "processes": processes,
        }
        return result
    finally:
        stop.set()
        await watcher.stop()
        await producer.stop()
        _join_hops(workers)
        try:
            await delete_topics(cfg)
        except Exception:  # best effort: the topics are per run and small
            pass


def _spawn_hops(
    cfg: RawConfig,
) -> tuple[
    multiprocessing.synchronize.Event,
    list[multiprocessing.synchronize.Event],
    list[multiprocessing.process.BaseProcess],
]:
    """One process per hop, started: the stop event, each hop's ready event, the processes."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    readies = [ctx.Event() for _ in range(cfg.hops)]
    workers: list[multiprocessing.process.BaseProcess] = [
        ctx.Process(
            target=hop_process,
            args=(asdict(cfg), hop, readies[hop - 1], stop),
            name=f"bench-raw-hop{hop}",
            daemon=True,
        )
        for hop in range(1, cfg.hops + 1)
    ]
    for worker in workers:
        worker.start()
    return stop, readies, workers


async def _hops_ready(
    readies: list[multiprocessing.synchronize.Event],
    workers: list[multiprocessing.process.BaseProcess],
) -> None:
    started = time.monotonic()
    while not all(r.is_set() for r in readies):
        if time.monotonic() - started > 60 or not all(w.is_alive() for w in workers):
            raise RuntimeError("raw hop workers did not start (group join) within 60 s")
        await asyncio.sleep(0.1)


def _join_hops(workers: list[multiprocessing.process.BaseProcess]) -> None:
    for worker in workers:
        worker.join(timeout=15)
        if worker.is_alive():
            worker.terminate()
            worker.join(timeout=5)


async def _paced_phase(
    cfg: RawConfig,
    producer: AIOKafkaProducer,
    watcher: _DoneWatcher,
    *,
    rate: float,
    seconds: float,
    pad: str,
    timeout: float,
    on_progress: Callable[[str, int, int], None],
) -> int:
    """Open loop at `rate`, for latency; waits until they are through. How many were sent."""
    total = int(rate * seconds)
    t_start = time.perf_counter()
    futures = []
    for n in range(total):
        delay = t_start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        key, value = _message(cfg.run_id, "paced", n, pad)
        futures.append(await producer.send(cfg.topic(1), key=key, value=value))
        on_progress("paced", watcher.count("paced"), total)
    await asyncio.gather(*futures)
    await _wait(
        lambda: watcher.count("paced") >= total,
        timeout,
        lambda: on_progress("paced", watcher.count("paced"), total),
    )
    return total


@dataclass(frozen=True)
class _Burst:
    """What the burst phase measured besides the done times."""

    start: float  # wall clock
    inject_s: float
    drained: bool
    cpu_s: dict[str, float]
    pg_per_message: dict[str, float]


async def _burst_phase(
    cfg: RawConfig,
    producer: AIOKafkaProducer,
    watcher: _DoneWatcher,
    sampler: ProcessSampler,
    *,
    messages: int,
    pad: str,
    timeout: float,
    on_progress: Callable[[str, int, int], None],
) -> _Burst:
    """Everything at once, for the throughput ceiling, with its CPU and PostgreSQL costs."""
    cpu_before = sampler.snapshot()
    pg_before = await pg_counters(cfg.database_url)
    start = time.time()
    futures = []
    for n in range(messages):
        key, value = _message(cfg.run_id, "burst", n, pad)
        futures.append(await producer.send(cfg.topic(1), key=key, value=value))
    await asyncio.gather(*futures)
    inject_s = time.time() - start
    drained = await _wait(
        lambda: watcher.count("burst") >= messages,
        timeout,
        lambda: on_progress("burst", watcher.count("burst"), messages),
    )
    cpu_s = cpu_deltas(cpu_before, sampler.snapshot())
    await asyncio.sleep(1.1)  # let the backends flush their statistics
    pg = per_unit(pg_before, await pg_counters(cfg.database_url), watcher.count("burst"))
    return _Burst(start, inject_s, drained, cpu_s, pg)


def _burst_figures(
    burst: _Burst, timings: list[tuple[float, float]], messages: int
) -> dict[str, Any]:
    done = [at for _, at in timings]
    return {
        "messages": messages,
        "completed": len(timings),
        "drained": burst.drained,
        "inject_s": round(burst.inject_s, 2),
        "wall_s": round(max(done) - burst.start, 2) if done else None,
        "msgs_per_s_overall": round(len(timings) / (max(done) - burst.start), 1) if done else None,
        "msgs_per_s": _round(completion_rate(done)),
        "latency": latency_summary([max(0.0, at - t0) for t0, at in timings]),
        "cpu_s": burst.cpu_s,
        "pg_per_message": burst.pg_per_message,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def new_run_id() -> str:
    return uuid.uuid4().hex[:8]
