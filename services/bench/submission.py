"""(c, HTTP) Intake's CPU per HTTP submission (issue 18's budget: <= 1 ms), on running services.

Measured from outside, on intake's process (psutil: user + system time), while the bench posts
`submissions` instant cases at `rate`/s to `POST /v1/cases`, minus what intake spends idle over
the same time (measured just before). routing, approval and delivery are paused (SIGSTOP, then
SIGCONT; they catch up afterwards) for the window, so intake's figure holds one submission's
own work and not its timeline of the case's later events: the request (authentication, rate
limit, idempotency key, validation, the case row and its outbox row in one transaction, the
answer), the outbox relay publishing `gov.case.submitted.v1`, and intake's timeline applying
that one event. It is not the HTTP layer alone: a published and an applied event are in it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import psutil

from services.bench.e2e import E2EConfig, Tokens, instant_items, load_catalog, post_case
from services.bench.procs import service_pids
from services.cli.applicants import application_for

PAUSED = ("routing", "approval", "delivery")
INCLUDES = (
    "the request, the case's outbox row, the relay's publish of gov.case.submitted.v1 and "
    "intake's timeline applying it"
)


@dataclass(frozen=True)
class SubmissionConfig:
    intake_url: str
    routing_url: str
    run_dir: Path
    submissions: int = 200
    rate: float = 50.0  # well inside intake's capacity: CPU per request, not a saturation test
    idle_seconds: float = 2.0
    seed: int = 18


def cpu_ms_per_submission(
    busy_cpu_s: float, busy_wall_s: float, idle_cpu_s_per_s: float, submissions: int
) -> float | None:
    """Intake's CPU over the window less its idle rate over the same time, per submission."""
    if submissions <= 0:
        return None
    return round(1000 * max(0.0, busy_cpu_s - idle_cpu_s_per_s * busy_wall_s) / submissions, 4)


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


@contextmanager
def paused(pids: list[int]) -> Iterator[None]:
    """The processes stopped (SIGSTOP) for the block, and continued after it, whatever
    happens inside."""
    stopped = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


async def measure_submissions(
    config: SubmissionConfig, *, catalog: dict[str, Any]
) -> dict[str, Any]:
    """Intake's CPU per submission, beside its budget."""
    pids = service_pids(config.run_dir)
    if "intake-1" not in pids:
        raise RuntimeError(f"no intake running from {config.run_dir} (deploy/local/services.sh)")
    intake = psutil.Process(pids["intake-1"])
    others = [pid for name, pid in pids.items() if name.split("-")[0] in PAUSED]
    rng = random.Random(config.seed)
    tokens = Tokens()
    items = instant_items(catalog, date.today())
    bodies = []
    for _ in range(config.submissions + 20):
        application = application_for(catalog, rng.choice(items), rng, delivery="electronic")
        bodies.append((json.dumps(application).encode(), f"Bearer {tokens.for_body(application)}"))
    e2e_config = E2EConfig(
        intake_urls=[config.intake_url], routing_url=config.routing_url, rates=[]
    )
    statuses: dict[int, int] = {}
    async with httpx.AsyncClient(timeout=30) as http:
        await load_catalog(http, tokens, e2e_config, catalog)
        for body, auth in bodies[:20]:  # warm-up: imports, pools, prepared statements
            await post_case(http, config.intake_url, body, auth)
        with paused(others):
            await asyncio.sleep(1.0)  # the warm-up's own work done
            idle0, idle_at = _cpu_s(intake), time.perf_counter()
            await asyncio.sleep(config.idle_seconds)
            idle_cpu, idle_wall = _cpu_s(intake) - idle0, time.perf_counter() - idle_at
            busy0, busy_at = _cpu_s(intake), time.perf_counter()
            sends = []
            for n, (body, auth) in enumerate(bodies[20:]):
                await asyncio.sleep(max(0.0, busy_at + n / config.rate - time.perf_counter()))
                sends.append(asyncio.create_task(post_case(http, config.intake_url, body, auth)))
            for answer in await asyncio.gather(*sends):
                statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            await asyncio.sleep(1.0)  # the relay's publish and the timeline's apply of the last
            busy_cpu, busy_wall = _cpu_s(intake) - busy0, time.perf_counter() - busy_at
    idle_rate = idle_cpu / idle_wall
    accepted = statuses.get(201, 0)
    if not accepted:  # a figure of nothing: say why rather than print a dash
        raise RuntimeError(f"intake took none of the submissions: answers {statuses}")
    return {
        "submissions": config.submissions,
        "rate": config.rate,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "intake_cpu_s": round(busy_cpu, 4),
        "wall_s": round(busy_wall, 3),
        "idle_cpu_ms_per_s": round(1000 * idle_rate, 3),
        "cpu_ms_per_event": cpu_ms_per_submission(busy_cpu, busy_wall, idle_rate, accepted),
        "events": accepted,
        "paused": sorted(name for name in pids if name.split("-")[0] in PAUSED),
        "includes": INCLUDES,
    }
