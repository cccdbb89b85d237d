"""A measured window of a comparison bench (cost per member, across regions): one side's
submissions through the compiled load generator, the wait until what they created is done, and
what the window cost every sampled process.

Guarantee: a window's CPU runs from just before its first submission until `done` held (or the
timeout ran out), for every group of the sampler, the load generator included (charged the CPU
it reports itself, never counted as the stack's: services.bench.member_cost.NOT_UNDER_TEST).
Shared by services/bench/members.py and services/bench/xregion.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from services.bench.e2e import Submitting, generator_cost, load_step
from services.bench.loadgen import LoadResult, Request, offer
from services.bench.member_cost import net_of_idle, per_unit_ms
from services.bench.procs import LOAD_GENERATOR, ProcessSampler, cpu_deltas, per_unit, pg_counters
from services.bench.stats import latency_summary


async def offer_sampled(
    config: Submitting,
    path: str,
    id_field: str,
    requests: list[Request],
    rate: float,
    sampler: ProcessSampler,
) -> LoadResult:
    """Each request once at `rate` (open loop), the generator sampled as `load-generator`
    while it runs and then charged the CPU it reports itself."""
    started: list[int] = []

    def sample_it(pid: int) -> None:
        started.append(pid)
        sampler.add_started(LOAD_GENERATOR, pid, kind="bench")

    load = await offer(
        load_step(config, requests, rate, path=path, id_field=id_field),
        on_start=sample_it,
    )
    for pid in started:
        sampler.ended(LOAD_GENERATOR, pid, load.cpu_s)
    return load


def created(load: LoadResult) -> dict[str, float]:
    """Id of what each 201 created -> the scheduled send of its POST."""
    return {a.case_id: a.sent_at for a in load.answers if a.status == 201 and a.case_id}


def statuses(load: LoadResult) -> dict[str, int]:
    """How many answers of each HTTP status (0: no answer), by status."""
    return {str(k): v for k, v in sorted(Counter(a.status for a in load.answers).items())}


async def until(done: Callable[[], bool], timeout: float) -> bool:
    """Poll `done` until it holds (True) or `timeout` seconds ran out (its last answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        await asyncio.sleep(0.2)
    return done()


async def measured(
    submit: Callable[[], Awaitable[LoadResult]],
    done: Callable[[LoadResult], bool],
    *,
    sampler: ProcessSampler,
    database_url: str,
    timeout: float,
) -> tuple[LoadResult, dict[str, Any]]:
    """Submit, wait until `done`, and what the window cost: CPU per process, PostgreSQL
    counters of `database_url` (deltas, not yet per unit), wall time."""
    cpu_before = sampler.snapshot()
    pg_before = await pg_counters(database_url)
    began = time.monotonic()
    load = await submit()
    drained = await until(lambda: done(load), timeout)
    cpu_after = sampler.snapshot()
    wall = time.monotonic() - began
    await asyncio.sleep(1.1)  # let the backends flush their statistics
    pg_after = await pg_counters(database_url)
    return load, {
        "drained": drained,
        "wall_s": round(wall, 2),
        "cpu_s": cpu_deltas(cpu_before, cpu_after),
        "pg": (pg_before, pg_after),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def window_figures(
    load: LoadResult, rate: float, window: dict[str, Any], units: int, idle: dict[str, float]
) -> dict[str, Any]:
    """A side's figures: what was offered and answered, and its CPU per unit (closed case or
    member) per process, net of idle and gross."""
    pg_before, pg_after = window.pop("pg")
    net = net_of_idle(window["cpu_s"], idle, window["wall_s"])
    return {
        "rate": rate,
        "offered": len(load.answers) + load.late,
        "statuses": statuses(load),
        "late": load.late,
        "http": latency_summary([a.latency_s for a in load.answers if a.status]),
        "load_generator": generator_cost(load),
        **window,
        "cpu_s_net_of_idle": net,
        "cpu_ms_per_unit": per_unit_ms(net, units),
        "cpu_ms_per_unit_with_idle": per_unit_ms(window["cpu_s"], units),
        "pg_per_unit": per_unit(pg_before, pg_after, units),
    }
