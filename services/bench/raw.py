"""(a) The raw limit: tongban's case path with no framework, on the same Kafka and PostgreSQL.

The case is tongban's (services/bench/raw_shape.py: one HTTP submission, 7 events published,
10 applications with inbox and state rows); the four processes that carry it
(services/bench/raw_pipeline.py) are plain asyncio programs on asyncpg and aiokafka, in tables
of schema `bench_raw` and topics `bench.raw.<run>.<role>`, made before the run and dropped after
it. They are driven as tongban is in (b): the same application bodies and clerks' tokens, from
the compiled load generator (services/bench/loadgen.py), a warm-up, then a ladder of open-loop
rates until closed cases/s stop rising (stats.stop_reason). A case is timed from its scheduled
send to the Kafka timestamp of its routed and closed records (set by the relays' producers).

Per rung: closed/s, p50/p95/p99 submit->routed and submit->closed, the CPU each process spent
(the four raw processes, PostgreSQL with its backends, Kafka, the generator, from psutil; the
generator's own from its rusage) and PostgreSQL's work per closed case; peak RSS per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.process
import multiprocessing.sharedctypes
import multiprocessing.synchronize
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.bench import loadgen, raw_shape
from services.bench.e2e import Tokens, generator_cost, instant_items
from services.bench.procs import (
    LOAD_GENERATOR,
    ProcessSampler,
    add_stack,
    cpu_deltas,
    per_unit,
    pg_counters,
)
from services.bench.raw_pipeline import PipelineConfig, ddl, process_main
from services.bench.stats import StepOutcome, completion_rate, latency_summary, stop_reason
from services.cli.applicants import application_for
from services.common.db import asyncpg_dsn
from services.common.kafka import TopicSpec, client_options, ensure_topics
from services.common.settings import CommonSettings

SCHEMA = "bench_raw"


@dataclass(frozen=True)
class RawConfig:
    rates: list[float]
    step_seconds: float = 10.0
    drain_timeout: float = 40.0
    min_gain: float = 0.10
    warmup_cases: int = 200
    warmup_rate: float = 50.0
    connections: int = 64
    max_inflight: int = 4096
    seed: int = 18


def pipeline_config(
    settings: CommonSettings, *, run_id: str, schema: str = SCHEMA
) -> PipelineConfig:
    """The four processes' configuration: plain values, as they are spawned."""
    kafka = client_options(settings)
    if "ssl_context" in kafka:
        raise RuntimeError("the raw pipeline runs on a PLAINTEXT or SASL_PLAINTEXT broker only")
    return PipelineConfig(
        dsn=asyncpg_dsn(settings.database_url),
        kafka=kafka,
        schema=schema,
        topic_prefix=f"bench.raw.{run_id}",
        group_prefix=f"bench-raw-{run_id}",
        partitions=settings.kafka_partitions,
        max_records=settings.consumer_max_records,
        poll_ms=settings.consumer_poll_ms,
        outbox_batch=settings.outbox_batch_size,
    )


def new_run_id() -> str:
    return uuid.uuid4().hex[:8]


# -- the pipeline's tables, topics and processes ---------------------------------------------------


async def prepare(cfg: PipelineConfig, settings: CommonSettings) -> None:
    """Fresh tables in the pipeline's schema, and its topics."""
    conn = await asyncpg.connect(cfg.dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{cfg.schema}" CASCADE')
        for statement in ddl(cfg.schema):
            await conn.execute(statement)
    finally:
        await conn.close()
    await ensure_topics(settings, [TopicSpec(t, partitions=cfg.partitions) for t in cfg.topics])


async def drop(cfg: PipelineConfig) -> None:
    """The pipeline's schema and topics gone (best effort for the topics: small, per run)."""
    conn = await asyncpg.connect(cfg.dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{cfg.schema}" CASCADE')
    finally:
        await conn.close()
    admin = AIOKafkaAdminClient(**cfg.kafka)
    await admin.start()
    try:
        await admin.delete_topics(cfg.topics)
    except Exception:  # the broker keeps a topic it cannot delete now: harmless, named per run
        pass
    finally:
        await admin.close()


class RawPipeline:
    """The four processes, spawned; `async with` starts them and waits until each consumer
    has its partitions and intake listens, and stops them at the end."""

    def __init__(self, cfg: PipelineConfig, *, start_timeout: float = 60.0) -> None:
        self.cfg = cfg
        self.start_timeout = start_timeout
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._ready = {p: ctx.Event() for p in raw_shape.PROCESSES}
        self._port: multiprocessing.sharedctypes.Synchronized[int] = ctx.Value("i", 0)
        self._workers: dict[str, multiprocessing.process.BaseProcess] = {
            p: ctx.Process(
                target=process_main,
                args=(asdict(cfg), p, self._ready[p], self._stop),
                kwargs={"port": self._port if p == raw_shape.INTAKE else None},
                name=f"raw-{p}",
                daemon=True,
            )
            for p in raw_shape.PROCESSES
        }

    @property
    def url(self) -> str:
        """intake's submission URL."""
        return f"http://{self.cfg.host}:{self._port.value}/v1/cases"

    @property
    def pids(self) -> dict[str, int]:
        return {f"raw-{p}": w.pid for p, w in self._workers.items() if w.pid is not None}

    async def __aenter__(self) -> RawPipeline:
        for worker in self._workers.values():
            worker.start()
        started = time.monotonic()
        while not all(r.is_set() for r in self._ready.values()):
            dead = [p for p, w in self._workers.items() if not w.is_alive()]
            if dead or time.monotonic() - started > self.start_timeout:
                self._shut()
                waiting = [p for p, r in self._ready.items() if not r.is_set()]
                raise RuntimeError(
                    f"raw pipeline did not start within {self.start_timeout:g} s "
                    f"(exited: {dead or 'none'}, not ready: {waiting})"
                )
            await asyncio.sleep(0.1)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await asyncio.to_thread(self._shut)

    def _shut(self) -> None:
        self._stop.set()
        for worker in self._workers.values():
            if worker.pid is None:
                continue
            worker.join(timeout=15)
            if worker.is_alive():
                worker.terminate()
                worker.join(timeout=5)


class CaseClock:
    """Routed and closed timestamps per case id, from the pipeline's routing and delivery
    topics (read from their start: they are the run's own)."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.routed: dict[str, float] = {}
        self.closed: dict[str, float] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(**self.cfg.kafka, enable_auto_commit=False)
        await consumer.start()
        parts = [
            TopicPartition(self.cfg.topic(role), p)
            for role in (raw_shape.ROUTING, raw_shape.DELIVERY)
            for p in range(self.cfg.partitions)
        ]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        self._consumer = consumer
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        wanted = {raw_shape.ROUTED: self.routed, raw_shape.CLOSED: self.closed}
        while True:
            batch = await self._consumer.getmany(timeout_ms=100, max_records=5000)
            for records in batch.values():
                for r in records:
                    target = wanted.get(raw_shape.header(r.headers or (), "ce_type") or "")
                    if target is not None and r.key is not None:
                        target.setdefault(r.key.decode(), r.timestamp / 1000)

    async def wait_closed(self, cases: Sequence[str], timeout: float) -> bool:
        """True once every one of `cases` closed, False if `timeout` s passed first."""
        deadline = time.monotonic() + timeout
        while not all(c in self.closed for c in cases):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


# -- the ladder ------------------------------------------------------------------------------------


def submissions(
    catalog: dict[str, Any], count: int, rng: random.Random, tokens: Tokens
) -> list[loadgen.Request]:
    """Applications for the catalog's instant items with electronic delivery, each with its
    clerk's (or the online channel's) token: the bodies and tokens (b) sends."""
    items = instant_items(catalog, date.today())
    found = []
    for _ in range(count):
        body = application_for(catalog, rng.choice(items), rng, delivery="electronic")
        token = tokens.for_body(body).removeprefix("Bearer ")
        found.append(loadgen.Request(token=token, body=raw_shape.dumps(body)))
    return found


def step_figures(
    rate: float,
    load: loadgen.LoadResult,
    routed: dict[str, float],
    closed: dict[str, float],
    *,
    drained: bool,
) -> dict[str, Any]:
    """One rung's figures from the generator's answers and the cases' Kafka timestamps, under
    the names of (b)'s rungs (e2e._step_figures), so the report shows both alike."""
    made = {a.case_id: a.sent_at for a in load.answers if a.status == 201 and a.case_id}
    statuses = Counter(a.status for a in load.answers if a.status)
    unanswered = sum(1 for a in load.answers if not a.status)
    offered = len(load.answers) + load.late
    closed_at = [closed[c] for c in made if c in closed]
    cps = completion_rate(closed_at)
    return {
        "rate": rate,
        "offered": offered,
        "submitted": len(made),
        "submit_rate": round(len(load.answers) * rate / offered, 1) if offered else None,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": {"no answer": unanswered} if unanswered else {},
        "skipped_inflight_cap": load.late,
        "routed": sum(1 for c in made if c in routed),
        "route_failed": 0,
        "closed": len(closed_at),
        "drained": drained,
        "closed_per_s": None if cps is None else round(cps, 1),
        "http": latency_summary([a.latency_s for a in load.answers if a.status]),
        "submit_to_routed": latency_summary(
            [max(0.0, routed[c] - t) for c, t in made.items() if c in routed]
        ),
        "submit_to_closed": latency_summary(
            [max(0.0, closed[c] - t) for c, t in made.items() if c in closed]
        ),
        "load_generator": generator_cost(load),
    }


async def _rung(
    cfg: RawConfig,
    pipeline: RawPipeline,
    clock: CaseClock,
    sampler: ProcessSampler,
    requests: list[loadgen.Request],
    rate: float,
    database_url: str,
) -> dict[str, Any]:
    """One rung: each of `requests` once at `rate`, then wait for their cases; its figures.
    The generator is sampled as `load-generator` while it runs, then charged the CPU it
    reports itself (as in (b))."""
    cpu_before = sampler.snapshot()
    pg_before = await pg_counters(database_url)
    began = time.monotonic()
    started: list[int] = []

    def sample_it(pid: int) -> None:
        started.append(pid)
        sampler.add_started(LOAD_GENERATOR, pid, kind="bench")

    load = await loadgen.offer(
        loadgen.LoadStep(
            urls=[pipeline.url],
            rate=rate,
            seconds=len(requests) / rate,
            requests=requests,
            connections=cfg.connections,
            max_inflight=cfg.max_inflight,
        ),
        on_start=sample_it,
    )
    for pid in started:
        sampler.ended(LOAD_GENERATOR, pid, load.cpu_s)
    made = [a.case_id for a in load.answers if a.status == 201 and a.case_id]
    drained = await clock.wait_closed(made, cfg.drain_timeout)
    cpu = cpu_deltas(cpu_before, sampler.snapshot())
    figures = step_figures(rate, load, clock.routed, clock.closed, drained=drained)
    figures["wall_s"] = round(time.monotonic() - began, 2)
    await asyncio.sleep(1.1)  # let the backends flush their statistics
    figures["pg_per_closed_case"] = per_unit(
        pg_before, await pg_counters(database_url), figures["closed"]
    )
    figures["cpu_s"] = cpu
    figures["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return figures


async def run_raw(
    cfg: RawConfig,
    *,
    catalog: dict[str, Any],
    settings: CommonSettings,
    run_dir: Path,
    on_step: Callable[[str, dict[str, Any] | None, float, float], None] = lambda *a: None,
) -> dict[str, Any]:
    """The raw pipeline up, warmed, the ladder climbed, everything dropped; the figures.
    `on_step(phase, figures, done, total)` reports progress, as (b)'s."""
    pcfg = pipeline_config(settings, run_id=new_run_id())
    rng = random.Random(cfg.seed)
    tokens = Tokens()
    await prepare(pcfg, settings)
    sampler = ProcessSampler()
    clock = CaseClock(pcfg)
    steps: list[dict[str, Any]] = []
    stopped = "ladder_end"
    try:
        async with RawPipeline(pcfg) as pipeline:
            for name, pid in pipeline.pids.items():
                sampler.add(name, pid, kind="raw")
            add_stack(sampler, run_dir)
            await clock.start()
            try:
                if cfg.warmup_cases:
                    on_step("raw warm-up", None, 0, 1)
                    warm = submissions(catalog, cfg.warmup_cases, rng, tokens)
                    await _rung(
                        cfg, pipeline, clock, sampler, warm, cfg.warmup_rate, settings.database_url
                    )
                    on_step("raw warm-up", None, 1, 1)
                sampler.start()
                outcomes: list[StepOutcome] = []
                for rate in cfg.rates:
                    name = f"raw {rate:g}/s"
                    on_step(name, None, 0, 1)
                    count = max(1, round(rate * cfg.step_seconds))
                    offered = submissions(catalog, count, rng, tokens)
                    figures = await _rung(
                        cfg, pipeline, clock, sampler, offered, rate, settings.database_url
                    )
                    steps.append(figures)
                    on_step(name, figures, 1, 1)
                    outcomes.append(
                        StepOutcome(
                            offered=rate,
                            submitted=figures["submitted"],
                            closed=figures["closed"],
                            closed_per_s=figures["closed_per_s"],
                        )
                    )
                    reason = stop_reason(outcomes, min_gain=cfg.min_gain)
                    if reason is not None:
                        stopped = reason
                        break
            finally:
                processes = await sampler.stop()
                await clock.stop()
    finally:
        await drop(pcfg)
    return _result(cfg, pcfg, steps, processes, stopped)


def _result(
    cfg: RawConfig,
    pcfg: PipelineConfig,
    steps: list[dict[str, Any]],
    processes: list[dict[str, Any]],
    stopped: str,
) -> dict[str, Any]:
    for proc in processes:  # CPU within the ladder's rungs (not the warm-up)
        proc["cpu_s"] = round(sum(s["cpu_s"].get(str(proc["name"]), 0.0) for s in steps), 2)
    requests = sum(s["load_generator"]["requests"] for s in steps)
    generator_cpu = sum(s["load_generator"]["cpu_s"] for s in steps)
    return {
        "label": "raw case pipeline",
        "kind": "rawcase",
        "shape": raw_shape.case_shape().as_dict(),
        "config": {
            **asdict(cfg),
            "partitions": pcfg.partitions,
            "max_records": pcfg.max_records,
            "poll_ms": pcfg.poll_ms,
            "outbox_batch": pcfg.outbox_batch,
            "pool_size": pcfg.pool_size,
        },
        "step_seconds": cfg.step_seconds,
        "stopped": stopped,
        "max_closed_per_s": max((s["closed_per_s"] or 0.0 for s in steps), default=0.0),
        "steps": steps,
        "processes": processes,
        "load_generator_cpu_ms_per_request": (
            round(1000 * generator_cpu / requests, 4) if requests else None
        ),
    }
