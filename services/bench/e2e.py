"""(b) tongban end to end: open-loop submissions at rising rates, timed from Kafka.

The demo catalog is loaded through routing's API; cases are instant items with electronic
delivery, so they close with no department acting. Each rung of the ladder submits for
`step_seconds` at its rate through intake's `POST /v1/cases` (round robin over the intake
replicas), then waits until its cases closed (or the drain time ran out). The submissions come
from the compiled load generator (services/bench/loadgen.py), open loop, each with its own
Idempotency-Key and the token of its counter's terminal (a clerk of its office, or the online
channel); its CPU and RSS are sampled as the process `load-generator`, never counted as the
stack's. A watcher reads `case.routing.v1` and `case.delivery.v1` from their end (no consumer
group) and keeps, per case, the timestamp of `gov.case.routed.v1` and `gov.case.closed.v1` (the
record timestamps, set by the outbox relay's producer). submit->routed / submit->closed run
from the time each POST was due (its scheduled send), so a late send counts against the figures.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Protocol

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from contracts.events import DELIVERY_TOPIC, ROUTING_TOPIC, CaseClosed, CaseRouted, CaseRouteFailed
from services.bench.loadgen import LoadResult, LoadStep, Request, offer
from services.bench.procs import (
    LOAD_GENERATOR,
    ProcessSampler,
    add_services,
    add_stack,
    cpu_deltas,
    per_unit,
    pg_counters,
)
from services.bench.stats import StepOutcome, completion_rate, latency_summary, stop_reason
from services.cli.applicants import application_for
from services.common.auth import AuthSettings, Role, mint_token
from services.common.kafka import client_options
from services.common.settings import CommonSettings

ROUTED, ROUTE_FAILED, CLOSED = CaseRouted.TYPE, CaseRouteFailed.TYPE, CaseClosed.TYPE


@dataclass(frozen=True)
class E2EConfig:
    intake_urls: list[str]
    routing_url: str
    rates: list[float]
    step_seconds: float = 10.0
    drain_timeout: float = 40.0
    min_gain: float = 0.10
    max_inflight: int = 256
    connections: int = 64  # the load generator's keep-alive connections per intake replica
    warmup_cases: int = 100
    idle_seconds: float = 5.0  # CPU of the idle stack, measured before the ladder
    measure_up_to: float = 100.0  # the rate of the p99 submit->routed target
    seed: int = 8


def instant_items(catalog: dict[str, Any], today: date) -> list[dict[str, Any]]:
    """Instant items in force today: accepted and approved automatically, so with electronic
    delivery a case closes with no one acting (as tests/e2e pick them). RuntimeError when the
    catalog has none: nothing the bench could measure."""
    iso = today.isoformat()
    items = [
        i
        for i in catalog["items"]
        if i.get("instant")
        and str(i.get("effective_from") or "0000") <= iso
        and (i.get("effective_to") is None or str(i["effective_to"]) >= iso)
    ]
    if not items:
        raise RuntimeError("the catalog has no instant item in force")
    return items


class Tokens:
    """Dev tokens minted once: a clerk per office (or the online channel), an admin."""

    def __init__(self) -> None:
        self._settings = AuthSettings()
        self._cache: dict[tuple[Role, str | None], str] = {}

    def token(self, role: Role, scope: str | None = None) -> str:
        key = (role, scope)
        if key not in self._cache:
            self._cache[key] = mint_token(
                self._settings, subject=f"bench-{role.value}-{scope}", role=role, scope=scope
            )
        return self._cache[key]

    def header(self, role: Role, scope: str | None = None) -> str:
        return f"Bearer {self.token(role, scope)}"

    def for_body(self, body: dict[str, Any]) -> str:
        """The token of the terminal that submits `body`: a clerk of its office, or online."""
        online = body.get("channel") == "online" or not body.get("office_code")
        return self.token(Role.clerk, "online" if online else body["office_code"])


async def partitions(settings: CommonSettings, *topics: str) -> list[TopicPartition]:
    """Every partition of these topics (raises if one is missing)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    found = [
        TopicPartition(t["topic"], p["partition"])
        for t in described
        if t["error_code"] == 0
        for p in t["partitions"]
    ]
    missing = set(topics) - {tp.topic for tp in found}
    if missing:
        raise RuntimeError(f"topics missing: {sorted(missing)} (run `tongban topics`)")
    return sorted(found)


class CaseWatcher:
    """Routed/closed timestamps per case id, from the routing and delivery topics (and
    `TOPICS`' other records to `take`, for a watcher that wants more); `topics` read others
    instead (a partner's mirrored topic)."""

    TOPICS: tuple[str, ...] = (ROUTING_TOPIC, DELIVERY_TOPIC)

    def __init__(self, settings: CommonSettings, topics: tuple[str, ...] | None = None) -> None:
        self.settings = settings
        self.topics = topics or self.TOPICS
        self.routed: dict[str, float] = {}
        self.failed: dict[str, float] = {}
        self.closed: dict[str, float] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        parts = await partitions(self.settings, *self.topics)
        consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            enable_auto_commit=False,
            max_poll_records=2000,
        )
        await consumer.start()
        consumer.assign(parts)
        await consumer.seek_to_end(*parts)
        for tp in parts:  # resolve the positions now, before the first submission
            await consumer.position(tp)
        self._consumer = consumer
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=100, max_records=2000)
            for records in batch.values():
                for r in records:
                    kind = next((v for k, v in r.headers if k == "ce_type"), b"").decode()
                    target = {ROUTED: self.routed, ROUTE_FAILED: self.failed, CLOSED: self.closed}
                    if kind in target and r.key is not None:
                        target[kind].setdefault(r.key.decode(), r.timestamp / 1000)
                    else:
                        self.take(kind, r.value)

    def take(self, kind: str, value: bytes | None) -> None:
        """Any other record of `TOPICS`: its `ce_type` and value (here: none wanted)."""

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._consumer is not None:
            await self._consumer.stop()


@dataclass(frozen=True)
class _Step:
    """One offered rate and what the load generator got for it."""

    rate: float
    load: LoadResult

    @property
    def sent_at(self) -> dict[str, float]:
        """Case id -> the scheduled send of the POST that created it (epoch s)."""
        return {a.case_id: a.sent_at for a in self.load.answers if a.status == 201 and a.case_id}


async def load_catalog(
    http: httpx.AsyncClient, tokens: Tokens, config: E2EConfig, catalog: dict[str, Any]
) -> int:
    answer = await http.post(
        f"{config.routing_url}/v1/catalog",
        json=catalog,
        headers={"Authorization": tokens.header(Role.admin)},
    )
    if answer.status_code != 201:
        raise RuntimeError(f"catalog refused ({answer.status_code}): {answer.text[:500]}")
    version = int(answer.json()["version"])
    for url in config.intake_urls:
        for _ in range(150):
            items = await http.get(
                f"{url}/v1/items", headers={"Authorization": tokens.header(Role.operator)}
            )
            if items.status_code == 200 and len(items.json()) == len(catalog["items"]):
                break
            await asyncio.sleep(0.2)
        else:
            raise RuntimeError(f"intake at {url} did not follow catalog version {version} in 30 s")
    return version


def instant_bodies(
    catalog: dict[str, Any],
    items: list[dict[str, Any]],
    rng: random.Random,
    count: int,
    tokens: Tokens,
) -> list[Request]:
    """`count` applications for these items (picked at random), electronic, each with the
    token of its terminal."""
    out = []
    for _ in range(count):
        body = application_for(catalog, rng.choice(items), rng, delivery="electronic")
        out.append(Request(token=tokens.for_body(body), body=json.dumps(body).encode()))
    return out


class Submitting(Protocol):
    """What a load step needs of a bench's configuration (e2e's, the cost per member's)."""

    @property
    def intake_urls(self) -> list[str]: ...
    @property
    def connections(self) -> int: ...
    @property
    def max_inflight(self) -> int: ...


def load_step(
    config: Submitting,
    requests: list[Request],
    rate: float,
    *,
    path: str = "/v1/cases",
    id_field: str = "case_id",
) -> LoadStep:
    """Each request once, at `rate`, round robin over the intake replicas."""
    return LoadStep(
        urls=[f"{url}{path}" for url in config.intake_urls],
        rate=rate,
        seconds=len(requests) / rate,
        requests=requests,
        connections=config.connections,
        max_inflight=config.max_inflight,
        id_field=id_field,
    )


async def post_case(http: httpx.AsyncClient, url: str, body: bytes, auth: str) -> httpx.Response:
    """One submission to intake's `POST /v1/cases`, with an idempotency key of its own."""
    return await http.post(
        f"{url}/v1/cases",
        content=body,
        headers={
            "Authorization": auth,
            "Content-Type": "application/json",
            "Idempotency-Key": f"bench-{uuid.uuid4().hex}",
        },
    )


async def _offer(
    config: E2EConfig, requests: list[Request], rate: float, sampler: ProcessSampler
) -> _Step:
    """Open loop through the compiled generator, sampled as `load-generator` while it runs and
    then charged the CPU it reports itself."""
    started: list[int] = []

    def sample_it(pid: int) -> None:
        started.append(pid)
        sampler.add_started(LOAD_GENERATOR, pid, kind="bench")

    load = await offer(load_step(config, requests, rate), on_start=sample_it)
    for pid in started:
        sampler.ended(LOAD_GENERATOR, pid, load.cpu_s)
    return _Step(rate=rate, load=load)


async def _drain(watcher: CaseWatcher, step: _Step, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(c in watcher.closed or c in watcher.failed for c in step.sent_at):
            return True
        await asyncio.sleep(0.2)
    return False


def _step_figures(step: _Step, watcher: CaseWatcher, drained: bool) -> dict[str, Any]:
    sent_at = step.sent_at
    answers = step.load.answers
    routed = [watcher.routed[c] - t for c, t in sent_at.items() if c in watcher.routed]
    closed_at = [watcher.closed[c] for c in sent_at if c in watcher.closed]
    closed = [watcher.closed[c] - t for c, t in sent_at.items() if c in watcher.closed]
    statuses = Counter(a.status for a in answers if a.status)
    unanswered = sum(1 for a in answers if not a.status)
    offered = len(answers) + step.load.late
    cps = completion_rate(closed_at)
    return {
        "rate": step.rate,
        "offered": offered,
        "submitted": len(sent_at),
        # sent per second of the schedule: below the rate only when sends were skipped
        "submit_rate": round(len(answers) * step.rate / offered, 1) if offered else None,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": {"no answer": unanswered} if unanswered else {},
        "skipped_inflight_cap": step.load.late,
        "routed": len(routed),
        "route_failed": sum(1 for c in sent_at if c in watcher.failed),
        "closed": len(closed),
        "drained": drained,
        "closed_per_s": None if cps is None else round(cps, 1),
        "http": latency_summary([a.latency_s for a in answers if a.status]),
        "submit_to_routed": latency_summary([max(0.0, x) for x in routed]),
        "submit_to_closed": latency_summary([max(0.0, x) for x in closed]),
        "load_generator": generator_cost(step.load),
    }


def generator_cost(load: LoadResult) -> dict[str, Any]:
    """What the load generator spent on a step: its CPU per request sent."""
    sent = len(load.answers)
    return {
        "requests": sent,
        "cpu_s": round(load.cpu_s, 3),
        "cpu_ms_per_request": round(1000 * load.cpu_s / sent, 4) if sent else None,
        "wall_s": round(load.wall_s, 2),
    }


async def run_e2e(
    config: E2EConfig,
    *,
    catalog: dict[str, Any],
    settings: CommonSettings,
    run_dir: Path,
    label: str,
    on_step: Callable[[str, dict[str, Any] | None, float, float], None] = lambda *a: None,
) -> dict[str, Any]:
    """The ladder; `on_step(phase, figures, done, total)` reports progress."""
    rng = random.Random(config.seed)
    tokens = Tokens()
    items = instant_items(catalog, date.today())
    watcher = CaseWatcher(settings)
    sampler = ProcessSampler()
    pids = add_services(sampler, run_dir)
    add_stack(sampler, run_dir)
    async with httpx.AsyncClient(timeout=30) as http:
        version = await load_catalog(http, tokens, config, catalog)
        await watcher.start()
        try:
            # Warm-up (not counted): first requests pay imports, pools and connections.
            if config.warmup_cases:
                warm = await _offer(
                    config,
                    instant_bodies(catalog, items, rng, config.warmup_cases, tokens),
                    20.0,
                    sampler,
                )
                await _drain(watcher, warm, config.drain_timeout)
            sampler.start()
            idle = await idle_cpu(sampler, config.idle_seconds)
            steps, stopped = await _climb(
                config,
                lambda count: instant_bodies(catalog, items, rng, count, tokens),
                watcher=watcher,
                sampler=sampler,
                settings=settings,
                label=label,
                on_step=on_step,
            )
        finally:
            processes = await sampler.stop()
            await watcher.stop()
    for proc in processes:  # CPU within the ladder's steps (not warm-up, not the idle probe)
        proc["cpu_s"] = round(sum(s["cpu_s"].get(str(proc["name"]), 0.0) for s in steps), 2)
    best = max((s["closed_per_s"] or 0.0 for s in steps), default=0.0)
    generator_cpu_s = sum(s["load_generator"]["cpu_s"] for s in steps)
    generator_requests = sum(s["load_generator"]["requests"] for s in steps)
    return {
        "label": label,
        "intake_urls": config.intake_urls,
        "catalog_version": version,
        "instant_items": [i["code"] for i in items],
        "step_seconds": config.step_seconds,
        "stopped": stopped,
        "max_closed_per_s": best,
        "steps": steps,
        "processes": processes,
        "idle_cpu_s_per_s": idle,
        "load_generator_cpu_ms_per_request": (
            round(1000 * generator_cpu_s / generator_requests, 4) if generator_requests else None
        ),
        "services": sorted(pids),
    }


async def _climb(
    config: E2EConfig,
    bodies: Callable[[int], list[Request]],
    *,
    watcher: CaseWatcher,
    sampler: ProcessSampler,
    settings: CommonSettings,
    label: str,
    on_step: Callable[[str, dict[str, Any] | None, float, float], None],
) -> tuple[list[dict[str, Any]], str]:
    """Rung after rung up the ladder of rates, until its end or until `stop_reason` sees the
    closed cases stop rising: the figures of every rung, and why it stopped."""
    steps: list[dict[str, Any]] = []
    outcomes: list[StepOutcome] = []
    for rate in config.rates:
        offered = bodies(max(1, round(rate * config.step_seconds)))
        on_step(f"{label} {rate:g}/s", None, 0, 1)
        figures = await _measured_step(
            config, offered, rate, watcher=watcher, sampler=sampler, settings=settings
        )
        steps.append(figures)
        on_step(f"{label} {rate:g}/s", figures, 1, 1)
        outcomes.append(
            StepOutcome(
                offered=rate,
                submitted=figures["submitted"],
                closed=figures["closed"],
                closed_per_s=figures["closed_per_s"],
            )
        )
        reason = stop_reason(outcomes, min_gain=config.min_gain, measure_up_to=config.measure_up_to)
        if reason is not None:
            return steps, reason
    return steps, "ladder_end"


async def idle_cpu(sampler: ProcessSampler, seconds: float) -> dict[str, float]:
    """CPU seconds per second each group takes with no case arriving (none if `seconds` is 0)."""
    if seconds <= 0:
        return {}
    before = sampler.snapshot()
    await asyncio.sleep(seconds)
    spent = cpu_deltas(before, sampler.snapshot())
    return {k: round(v / seconds, 3) for k, v in spent.items()}


async def _measured_step(
    config: E2EConfig,
    requests: list[Request],
    rate: float,
    *,
    watcher: CaseWatcher,
    sampler: ProcessSampler,
    settings: CommonSettings,
) -> dict[str, Any]:
    """One rung of the ladder: offer `bodies` at `rate`, wait for their cases, and what it
    took (latencies, CPU per group, PostgreSQL work per closed case)."""
    cpu_before = sampler.snapshot()
    pg_before = await pg_counters(settings.database_url)
    began = time.monotonic()
    step = await _offer(config, requests, rate, sampler)
    drained = await _drain(watcher, step, config.drain_timeout)
    cpu_after = sampler.snapshot()
    figures = _step_figures(step, watcher, drained)
    figures["wall_s"] = round(time.monotonic() - began, 2)
    await asyncio.sleep(1.1)  # let the backends flush their statistics
    figures["pg_per_closed_case"] = per_unit(
        pg_before, await pg_counters(settings.database_url), figures["closed"]
    )
    figures["cpu_s"] = cpu_deltas(cpu_before, cpu_after)
    figures["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return figures
