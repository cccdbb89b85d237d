"""Sustained load: resident memory of every process under test over minutes of steady load
(issue 18: <= 150 MB per service process after ten minutes; `make bench-soak`).

Guarantee: after a warm-up, the compiled load generator offers instant online cases (electronic
delivery, so they close with no department acting) at one steady open-loop rate for the whole
time, as one run of the generator (no gap between minutes), round robin over the intake
replicas; a pool of distinct applications is cycled, each request with its own Idempotency-Key,
so every request is a new case. Every `sample_seconds` the RSS and CPU of each service process,
PostgreSQL (with its backends) and Kafka are sampled, with the count of cases closed so far (a
watcher on `case.delivery.v1`); a line a minute reports progress. Once the generator is done,
the bench waits for the cases it created to close, samples a last time and reports RSS at start,
peak and end per process, closed/s, CPU per closed case per process (gross: at a steady rate the
idle share is part of the cost) and the target's figure: the largest service RSS at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from services.bench.e2e import (
    CaseWatcher,
    E2EConfig,
    Tokens,
    generator_cost,
    instant_bodies,
    instant_items,
    load_catalog,
)
from services.bench.loadgen import LoadResult, LoadStep, offer
from services.bench.member_cost import per_unit_ms
from services.bench.procs import (
    LOAD_GENERATOR,
    MACHINE,
    ProcessSampler,
    add_services,
    add_stack,
    cpu_deltas,
)
from services.bench.rss_series import closed_per_s, rss_summary, worst_at_end
from services.bench.stats import completion_rate, latency_summary
from services.bench.windows import created, offer_sampled, statuses, until
from services.common.settings import CommonSettings


@dataclass(frozen=True)
class SoakConfig:
    intake_urls: list[str]
    routing_url: str
    rate: float = 50.0  # cases/s, open loop, the whole time
    minutes: float = 10.0
    sample_seconds: float = 10.0
    pool: int = 3_000  # distinct applications, cycled (each send a new case)
    warmup_cases: int = 100  # at 20/s, not counted
    drain_timeout: float = 120.0
    connections: int = 64
    max_inflight: int = 512
    seed: int = 10


async def run_soak(
    config: SoakConfig,
    *,
    catalog: dict[str, Any],
    settings: CommonSettings,
    run_dir: Path,
    on_minute: Callable[[dict[str, Any]], None] = lambda _m: None,
) -> dict[str, Any]:
    """Warm-up, then the steady load with its samples; the figures."""
    rng = random.Random(config.seed)
    tokens = Tokens()
    items = instant_items(catalog, date.today())
    watcher = CaseWatcher(settings)
    sampler = ProcessSampler()
    services = add_services(sampler, run_dir)
    if not services:
        raise RuntimeError(f"no services run from {run_dir}: deploy/local/services.sh up")
    add_stack(sampler, run_dir)
    seconds = config.minutes * 60
    e2e_config = E2EConfig(intake_urls=config.intake_urls, routing_url=config.routing_url, rates=[])
    async with httpx.AsyncClient(timeout=30) as http:
        version = await load_catalog(http, tokens, e2e_config, catalog)
    await watcher.start()
    load_task: asyncio.Task[LoadResult] | None = None
    try:
        if config.warmup_cases:  # first requests pay imports, pools and connections
            warm = await offer_sampled(
                config,
                "/v1/cases",
                "case_id",
                instant_bodies(catalog, items, rng, config.warmup_cases, tokens),
                20.0,
                sampler,
            )
            await until(
                lambda: all(c in watcher.closed for c in created(warm)), config.drain_timeout
            )
        pool = instant_bodies(
            catalog, items, rng, min(config.pool, max(1, round(config.rate * seconds))), tokens
        )
        step = LoadStep(
            urls=[f"{url}/v1/cases" for url in config.intake_urls],
            rate=config.rate,
            seconds=seconds,
            requests=pool,
            connections=config.connections,
            max_inflight=config.max_inflight,
        )
        generator: list[int] = []

        def sample_it(pid: int) -> None:
            generator.append(pid)
            sampler.add_started(LOAD_GENERATOR, pid, kind="bench")

        cpu_start = sampler.snapshot()
        closed_start = len(watcher.closed)
        began = time.monotonic()

        def sample() -> dict[str, Any]:
            cpu = cpu_deltas(cpu_start, sampler.snapshot())  # samples RSS too
            return {
                "t": round(time.monotonic() - began, 1),
                "closed": len(watcher.closed) - closed_start,
                "rss_mb": sampler.rss_mb(),
                "cpu_s": {k: v for k, v in cpu.items() if k != MACHINE},
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }

        samples = [sample()]
        load_task = asyncio.get_running_loop().create_task(offer(step, on_start=sample_it))
        minute = 1
        while not load_task.done():
            due = began + len(samples) * config.sample_seconds
            await asyncio.wait({load_task}, timeout=max(0.0, due - time.monotonic()))
            samples.append(sample())
            if samples[-1]["t"] >= minute * 60:
                on_minute(_minute_line(samples, services))
                minute = int(samples[-1]["t"] // 60) + 1
        if samples[-1]["t"] % 60 > config.sample_seconds:  # a last part-minute: its line too
            on_minute(_minute_line(samples, services))
        load = load_task.result()
        for pid in generator:
            sampler.ended(LOAD_GENERATOR, pid, load.cpu_s)
        sent = created(load)
        drained = await until(lambda: all(c in watcher.closed for c in sent), config.drain_timeout)
        samples.append(sample())
        cpu_s = samples[-1]["cpu_s"]
        wall = time.monotonic() - began
    finally:
        if load_task is not None and not load_task.done():
            load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load_task
        await watcher.stop()

    closed = [c for c in sent if c in watcher.closed]
    summary = rss_summary(samples)
    rate_mid = completion_rate([watcher.closed[c] for c in closed])
    return {
        "rate": config.rate,
        "minutes": config.minutes,
        "sample_seconds": config.sample_seconds,
        "intake_urls": config.intake_urls,
        "catalog_version": version,
        "services": services,
        "offered": len(load.answers) + load.late,
        "submitted": len(sent),
        "statuses": statuses(load),
        "late": load.late,
        "closed": len(closed),
        "drained": drained,
        "wall_s": round(wall, 1),
        "closed_per_s": None if rate_mid is None else round(rate_mid, 1),
        "http": latency_summary([a.latency_s for a in load.answers if a.status]),
        "submit_to_closed": latency_summary(
            [max(0.0, watcher.closed[c] - sent[c]) for c in closed]
        ),
        "load_generator": generator_cost(load),
        "cpu_s": cpu_s,
        "cpu_ms_per_closed_case": per_unit_ms(cpu_s, len(closed)),
        "rss": summary,
        "worst_service_end": worst_at_end(summary, services),
        "samples": samples,
    }


def _minute_line(samples: list[dict[str, Any]], services: list[str]) -> dict[str, Any]:
    last = samples[-1]
    return {
        "minute": round(last["t"] / 60, 1),
        "t": last["t"],
        "closed": last["closed"],
        "closed_per_s": closed_per_s(samples, last["t"] - 60, last["t"]),
        "rss_mb": {n: last["rss_mb"][n] for n in services if n in last["rss_mb"]},
        "loadavg_1m": last["loadavg_1m"],
    }
