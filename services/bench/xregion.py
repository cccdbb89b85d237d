"""The cost of a case across regions (跨省通办, DESIGN.md §9) against a single case, in one run
on two linked regions (deploy/local/federation.sh: `make bench-xregion`).

Guarantee: both sides submit at region 1's counters, at the same rate, through the compiled load
generator: single cases of region 1's instant online items, and cases across regions of the
partner's `cross_region` items of the same codes (applicants of the partner's city, so region 2
adopts, decides and issues them, and the result comes back over the link). Each side is charged
the CPU every process of BOTH regions and MirrorMaker 2 spent from its first submission until
its last case was seen closed, less what that process spends idle over the same time (measured
before both sides), divided by the cases that closed; the gross figures (idle included) are
kept beside them. A single case is closed when `gov.case.closed.v1` is on region 1's
`case.delivery.v1`; a case across regions when the handling region's `gov.case.closed.v1`
arrived back in region 1 on `<partner alias>.xregion.out.v1` (its submit->closed runs to the
handling region's record time). PostgreSQL counters are region 1's.

The demo catalogs fit: the partner's SOC-0101 and MED-0401 are cross_region, instant and
online, and region 1 has both codes instant and online too (services.bench.xregion_cost).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from contracts.events import DELIVERY_TOPIC, XREGION_TOPIC
from services.bench.e2e import CaseWatcher, Tokens, idle_cpu
from services.bench.loadgen import LoadResult, Request
from services.bench.member_cost import cost_ratios
from services.bench.procs import (
    ProcessSampler,
    add_infra,
    add_services,
    add_stack,
    mirror_pid,
)
from services.bench.stats import latency_summary
from services.bench.windows import created, measured, offer_sampled, until, window_figures
from services.bench.xregion_cost import LINK, PARTNER_PREFIX, comparable_items, with_region_totals
from services.cli.applicants import application_for
from services.cli.federation import cross_region_application, cross_region_items
from services.common.auth import Role
from services.common.settings import CommonSettings


@dataclass(frozen=True)
class XRegionConfig:
    intake_urls: list[str]  # region 1's (the origin's counters)
    region2_run_dir: Path
    partner_alias: str = "region2"  # MirrorMaker's alias of region 2, seen from region 1
    rate: float = 10.0  # cases/s, both sides
    seconds: float = 20.0  # submission time of each side
    warmup_cases: int = 30  # of each side, not counted
    idle_seconds: float = 5.0
    drain_timeout: float = 90.0
    connections: int = 64
    max_inflight: int = 256
    seed: int = 9


def single_bodies(
    home: dict[str, Any],
    pairs: list[tuple[dict[str, Any], dict[str, Any]]],
    rng: random.Random,
    count: int,
    tokens: Tokens,
) -> list[Request]:
    """`count` applications of region 1's items of the pairs in turn, by its own applicants at
    a counter near them, electronic."""
    out = []
    for n in range(count):
        body = application_for(
            home, pairs[n % len(pairs)][1], rng, channel="counter", delivery="electronic"
        )
        out.append(Request(token=tokens.for_body(body), body=json.dumps(body).encode()))
    return out


def cross_bodies(
    home: dict[str, Any],
    partner: dict[str, Any],
    pairs: list[tuple[dict[str, Any], dict[str, Any]]],
    rng: random.Random,
    count: int,
    tokens: Tokens,
) -> list[Request]:
    """`count` applications of the partner's items of the pairs in turn, by applicants of the
    partner's city at a counter of region 1, electronic."""
    out = []
    for n in range(count):
        item = pairs[n % len(pairs)][0]
        body = cross_region_application(home, partner, item, rng, delivery="electronic")
        out.append(Request(token=tokens.for_body(body), body=json.dumps(body).encode()))
    return out


async def _partner_items_known(
    http: httpx.AsyncClient, tokens: Tokens, config: XRegionConfig, city: str, expected: int
) -> None:
    """Until region 1's intake lists the partner's cross_region items (its copy of the
    mirrored catalog)."""
    for url in config.intake_urls:
        for _ in range(300):
            listed = await http.get(
                f"{url}/v1/items",
                params={"city": city},
                headers={"Authorization": tokens.header(Role.operator)},
            )
            if listed.status_code == 200 and len(listed.json()) >= expected:
                break
            await asyncio.sleep(0.2)
        else:
            raise RuntimeError(
                f"intake at {url} does not list {city}'s cross_region items after 60 s: is the "
                "partner region up and linked (deploy/local/federation.sh up)?"
            )


def _side(
    load: LoadResult,
    window: dict[str, Any],
    closed: dict[str, float],
    rate: float,
    idle: dict[str, float],
) -> dict[str, Any]:
    cases = created(load)
    done = [c for c in cases if c in closed]
    figures = window_figures(load, rate, window, len(done), idle)
    for key in ("cpu_ms_per_unit", "cpu_ms_per_unit_with_idle"):
        figures[key] = with_region_totals(figures[key])
    return {
        **figures,
        "submitted": len(cases),
        "closed": len(done),
        "submit_to_closed": latency_summary([max(0.0, closed[c] - cases[c]) for c in done]),
    }


async def run_xregion(
    config: XRegionConfig,
    *,
    home: dict[str, Any],
    partner: dict[str, Any],
    settings: CommonSettings,
    run_dir: Path,
    on_phase: Callable[[str], None] = lambda _p: None,
) -> dict[str, Any]:
    """Warm-up, idle, then single cases, then cases across regions: figures and ratios."""
    rng = random.Random(config.seed)
    tokens = Tokens()
    pairs = comparable_items(home, partner, date.today())
    singles_seen = CaseWatcher(settings, (DELIVERY_TOPIC,))
    # What the handling region publishes about a case it adopted comes back over the link.
    cross_seen = CaseWatcher(settings, (f"{config.partner_alias}.{XREGION_TOPIC}",))
    sampler = ProcessSampler()
    add_services(sampler, run_dir)
    add_stack(sampler, run_dir)
    partner_services = add_services(sampler, config.region2_run_dir, prefix=PARTNER_PREFIX)
    add_infra(sampler, config.region2_run_dir, prefix=PARTNER_PREFIX)
    link = mirror_pid(run_dir)
    if not partner_services or link is None:
        raise RuntimeError(
            f"no services of region 2 in {config.region2_run_dir} or no MirrorMaker 2 in "
            f"{run_dir / 'mirror'}: start both regions (deploy/local/federation.sh up)"
        )
    sampler.add(LINK, link, kind="infra")

    def side(bodies: Callable[[int], list[Request]]) -> Callable[[int], Awaitable[LoadResult]]:
        return lambda count: offer_sampled(
            config, "/v1/cases", "case_id", bodies(count), config.rate, sampler
        )

    singles = side(lambda n: single_bodies(home, pairs, rng, n, tokens))
    crosses = side(lambda n: cross_bodies(home, partner, pairs, rng, n, tokens))

    def closed_in(watcher: CaseWatcher) -> Callable[[LoadResult], bool]:
        return lambda load: all(c in watcher.closed for c in created(load))

    async with httpx.AsyncClient(timeout=30) as http:
        expected = len(cross_region_items(partner))
        await _partner_items_known(http, tokens, config, partner["city"]["code"], expected)
    await singles_seen.start()
    await cross_seen.start()
    try:
        on_phase("warm-up")
        if config.warmup_cases:  # first requests pay imports, pools, connections, the link
            warm = await singles(config.warmup_cases)
            await until(lambda: closed_in(singles_seen)(warm), config.drain_timeout)
            warm = await crosses(config.warmup_cases)
            await until(lambda: closed_in(cross_seen)(warm), config.drain_timeout)
        sampler.start()
        on_phase("idle")
        idle = await idle_cpu(sampler, config.idle_seconds)
        count = max(1, round(config.rate * config.seconds))
        windows = []
        for phase, submit, seen in (
            ("single cases", singles, singles_seen),
            ("cases across regions", crosses, cross_seen),
        ):
            on_phase(f"{phase} {config.rate:g}/s")
            windows.append(
                await measured(
                    partial(submit, count),
                    closed_in(seen),
                    sampler=sampler,
                    database_url=settings.database_url,
                    timeout=config.drain_timeout,
                )
            )
    finally:
        processes = await sampler.stop()
        await singles_seen.stop()
        await cross_seen.stop()

    (single_load, single_window), (cross_load, cross_window) = windows
    single = _side(single_load, single_window, singles_seen.closed, config.rate, idle)
    cross = _side(cross_load, cross_window, cross_seen.closed, config.rate, idle)
    return {
        "items": [{"partner": p["code"], "home": h["code"]} for p, h in pairs],
        "partner_city": partner["city"]["code"],
        "home_city": home["city"]["code"],
        "processes": processes,
        "singles": single,
        "cross_region": cross,
        "idle_cpu_s_per_s": idle,
        "ratio": cost_ratios(cross["cpu_ms_per_unit"], single["cpu_ms_per_unit"]),
        "ratio_with_idle": cost_ratios(
            cross["cpu_ms_per_unit_with_idle"], single["cpu_ms_per_unit_with_idle"]
        ),
    }
