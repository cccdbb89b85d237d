"""(c) The cost per member: bundles (一件事, DESIGN.md §8) against single cases, in one run.

Guarantee: both sides submit the same items at the same member rate through the compiled load
generator, and each is charged the CPU every process under test spent from its first submission
until its last case closed (services, PostgreSQL with its backends, Kafka; never the bench or the
generator), less what that process spends idle over the same time (measured before both sides),
divided by what closed: single cases, or bundle members. The gross figures (idle included) are
kept beside them.

None of the demo catalog's bundles closes with no department acting (each has a member that is
not instant), so the bench loads the catalog with a bundle of its own (`B-BENCH`,
services.bench.member_cost.bench_bundle): instant online items of one category, electronic
delivery, so its members are accepted, approved and issued automatically, delivered once
together and closed. The single cases are the same items, one application each, at the same
kind of counter, electronic. A watcher reads `bundle.v1` (a bundle's members, from its
submission) and `case.delivery.v1` (each case's `gov.case.closed.v1`) from their end.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from contracts.events import BUNDLE_TOPIC, DELIVERY_TOPIC, BundleSubmitted
from services.bench.e2e import CaseWatcher, E2EConfig, Tokens, idle_cpu, load_catalog
from services.bench.loadgen import LoadResult, Request
from services.bench.member_cost import (
    bench_bundle,
    bundle_done,
    bundles_closing_alone,
    closed_members,
    cost_ratios,
    with_bundle,
)
from services.bench.procs import ProcessSampler, add_services, add_stack
from services.bench.stats import latency_summary
from services.bench.windows import created, measured, offer_sampled, until, window_figures
from services.cli.applicants import application_for, bundle_application_for, streets
from services.common.auth import Role
from services.common.settings import CommonSettings


@dataclass(frozen=True)
class MembersConfig:
    intake_urls: list[str]
    routing_url: str
    bundle_rate: float = 10.0  # bundles/s; single cases go at bundle_rate x members
    seconds: float = 20.0  # submission time of each side
    members: int = 3  # members of the bench's bundle
    warmup_bundles: int = 30  # and as many member-rate single cases, not counted
    idle_seconds: float = 5.0  # idle CPU of the stack, measured after the warm-up
    drain_timeout: float = 60.0
    connections: int = 64
    max_inflight: int = 256
    seed: int = 18


class MemberWatcher(CaseWatcher):
    """Each case's closing time (record timestamp of `gov.case.closed.v1`) and each bundle's
    members (from `gov.bundle.submitted.v1`)."""

    TOPICS = (DELIVERY_TOPIC, BUNDLE_TOPIC)

    def __init__(self, settings: CommonSettings) -> None:
        super().__init__(settings)
        self.members_of: dict[str, list[str]] = {}

    def take(self, kind: str, value: bytes | None) -> None:
        if kind == BundleSubmitted.TYPE and value is not None:
            data = json.loads(value)
            self.members_of[data["bundle_id"]] = [m["case_id"] for m in data["members"]]


def single_bodies(
    catalog: dict[str, Any],
    bundle: dict[str, Any],
    rng: random.Random,
    count: int,
    tokens: Tokens,
) -> list[Request]:
    """`count` single applications of the bundle's items in turn, at a counter of the
    bundle's kind near the applicant, electronic."""
    items = {i["code"]: i for i in catalog["items"]}
    codes = [m["item"] for m in bundle["members"]]
    out = []
    for n in range(count):
        district, street = rng.choice(streets(catalog))
        body = application_for(
            catalog,
            items[codes[n % len(codes)]],
            rng,
            channel="counter",
            delivery="electronic",
            district=district,
            street=street,
        )
        out.append(Request(token=tokens.for_body(body), body=json.dumps(body).encode()))
    return out


def bundle_bodies(
    catalog: dict[str, Any], bundle: dict[str, Any], rng: random.Random, count: int, tokens: Tokens
) -> list[Request]:
    """`count` applications for the bundle at its window near the applicant, electronic."""
    out = []
    for _ in range(count):
        body = bundle_application_for(catalog, bundle, rng, delivery="electronic")
        out.append(Request(token=tokens.for_body(body), body=json.dumps(body).encode()))
    return out


async def _wait_for_bundle(
    http: httpx.AsyncClient, tokens: Tokens, config: MembersConfig, code: str
) -> None:
    for url in config.intake_urls:
        for _ in range(150):
            listed = await http.get(
                f"{url}/v1/bundles", headers={"Authorization": tokens.header(Role.operator)}
            )
            if listed.status_code == 200 and code in {b["code"] for b in listed.json()}:
                break
            await asyncio.sleep(0.2)
        else:
            raise RuntimeError(f"intake at {url} did not list bundle {code} in 30 s")


async def run_members(
    config: MembersConfig,
    *,
    catalog: dict[str, Any],
    settings: CommonSettings,
    run_dir: Path,
    on_phase: Callable[[str], None] = lambda _p: None,
) -> dict[str, Any]:
    """Warm-up, then single cases at the member rate, then bundles: figures and ratios."""
    rng = random.Random(config.seed)
    tokens = Tokens()
    today = date.today()
    alone = bundles_closing_alone(catalog, today)
    bundle = bench_bundle(catalog, today, config.members)
    loaded = with_bundle(catalog, bundle)
    member_rate = config.bundle_rate * len(bundle["members"])
    watcher = MemberWatcher(settings)
    sampler = ProcessSampler()
    add_services(sampler, run_dir)
    add_stack(sampler, run_dir)

    def singles(count: int) -> Callable[[], Any]:
        requests = single_bodies(loaded, bundle, rng, count, tokens)
        return lambda: offer_sampled(config, "/v1/cases", "case_id", requests, member_rate, sampler)

    def bundles(count: int) -> Callable[[], Any]:
        requests = bundle_bodies(loaded, bundle, rng, count, tokens)
        return lambda: offer_sampled(
            config, "/v1/bundles", "bundle_id", requests, config.bundle_rate, sampler
        )

    def cases_closed(load: LoadResult) -> bool:
        return all(c in watcher.closed for c in created(load))

    def bundles_closed(load: LoadResult) -> bool:
        return all(bundle_done(b, watcher.members_of, watcher.closed) for b in created(load))

    e2e_config = E2EConfig(intake_urls=config.intake_urls, routing_url=config.routing_url, rates=[])
    async with httpx.AsyncClient(timeout=30) as http:
        version = await load_catalog(http, tokens, e2e_config, loaded)
        await _wait_for_bundle(http, tokens, config, bundle["code"])
        await watcher.start()
        try:
            on_phase("warm-up")
            if config.warmup_bundles:  # first requests pay imports, pools and connections
                warm = await singles(config.warmup_bundles)()
                await until(lambda: cases_closed(warm), config.drain_timeout)
                warm = await bundles(config.warmup_bundles)()
                await until(lambda: bundles_closed(warm), config.drain_timeout)
            sampler.start()
            on_phase("idle")
            idle = await idle_cpu(sampler, config.idle_seconds)
            count = max(1, round(config.bundle_rate * config.seconds))
            on_phase(f"single cases {member_rate:g}/s")
            single_load, single_window = await measured(
                singles(count * len(bundle["members"])),
                cases_closed,
                sampler=sampler,
                database_url=settings.database_url,
                timeout=config.drain_timeout,
            )
            on_phase(f"bundles {config.bundle_rate:g}/s")
            bundle_load, bundle_window = await measured(
                bundles(count),
                bundles_closed,
                sampler=sampler,
                database_url=settings.database_url,
                timeout=config.drain_timeout,
            )
        finally:
            await sampler.stop()
            await watcher.stop()

    cases = created(single_load)
    closed_cases = [c for c in cases if c in watcher.closed]
    single = {
        **window_figures(single_load, member_rate, single_window, len(closed_cases), idle),
        "submitted": len(cases),
        "closed": len(closed_cases),
        "submit_to_closed": latency_summary(
            [max(0.0, watcher.closed[c] - cases[c]) for c in closed_cases]
        ),
    }
    sent = created(bundle_load)
    members_closed = closed_members(sent, watcher.members_of, watcher.closed)
    done = [b for b in sent if bundle_done(b, watcher.members_of, watcher.closed)]
    grouped = {
        **window_figures(bundle_load, config.bundle_rate, bundle_window, members_closed, idle),
        "submitted": len(sent),
        "members": sum(len(watcher.members_of.get(b, [])) for b in sent),
        "closed_members": members_closed,
        "closed_bundles": len(done),
        # a bundle closes when its last member does (one delivery for all)
        "submit_to_closed": latency_summary(
            [
                max(0.0, max(watcher.closed[c] for c in watcher.members_of[b]) - sent[b])
                for b in done
            ]
        ),
    }
    return {
        "catalog_version": version,
        "catalog_bundles_closing_alone": alone,
        "bundle": bundle,
        "singles": single,
        "bundles": grouped,
        "idle_cpu_s_per_s": idle,
        "ratio": cost_ratios(grouped["cpu_ms_per_unit"], single["cpu_ms_per_unit"]),
        "ratio_with_idle": cost_ratios(
            grouped["cpu_ms_per_unit_with_idle"], single["cpu_ms_per_unit_with_idle"]
        ),
    }
