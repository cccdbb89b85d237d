"""`tongban federation-demo`: cases across regions (跨省通办, DESIGN.md §9) on two running regions.

Run by `make federation` once both regions, the MirrorMaker 2 link and both catalogs are up.
Guarantees what it prints: every case it submits ends `closed` in BOTH regions' views (the
origin's intake, where the applicant stood, and the handling region's, which decided), or the
command exits 1 naming the case and the status each region last showed.

Both ways: applicants of region 2's city at region 1's counters, and of region 1's city at
region 2's, each for a `cross_region` item of their own city's catalog, of several modes. The
handling region's department decides through its approval REST (as a reviewer would); a
`counter_pickup` result is collected at the origin office, a postal one is delivered by the
handling region. Last, one refusal: an item of the partner that stays `city`, refused at the
counter with its code and guidance.

Applicants and offices come from the catalogs' own structure (services.cli.applicants), never
from hard-coded codes, so any two catalogs with cross_region items do.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from services.cli.applicants import OFFICE_LEVEL, application_for, default_intake_levels
from services.cli.demo import in_force, progress_bar
from services.cli.devclient import ActingClient, ServicePorts
from services.operators.catalog_file import load_catalog_file

CROSS_REGION = "cross_region"


@dataclass(frozen=True)
class Region:
    """One region as this command sees it: its catalog (file) and its services' ports."""

    label: str
    catalog: dict[str, Any]
    ports: ServicePorts

    @property
    def city(self) -> str:
        return str(self.catalog["city"]["code"])

    @property
    def name(self) -> str:
        return str(self.catalog["city"]["name"])

    def url(self, service: str) -> str:
        return self.ports.url(service)

    def client(self, timeout: float = 30) -> ActingClient:
        return ActingClient(timeout=timeout, port_offset=self.ports.offset)


def load_region(label: str, catalog_file: Path, port_offset: int) -> Region:
    return Region(label, load_catalog_file(catalog_file), ServicePorts(port_offset))


def cross_region_items(catalog: dict[str, Any], today: date | None = None) -> list[dict[str, Any]]:
    """The catalog's items a partner's counter may take for its applicants: `cross_region`
    and in force today."""
    today = today or date.today()
    return [i for i in catalog["items"] if i.get("scope") == CROSS_REGION and in_force(i, today)]


def city_items(catalog: dict[str, Any], today: date | None = None) -> list[dict[str, Any]]:
    """Items in force that stay at the city's own counters (scope `city`, the default)."""
    today = today or date.today()
    return [
        i
        for i in catalog["items"]
        if i.get("scope", "city") == "city" and in_force(i, today) and i["mode"] != "online"
    ]


def origin_office(origin: dict[str, Any], item: dict[str, Any]) -> str:
    """An office of the origin region that takes `item`'s category at its counter: a center
    of the level the item names (or its category's default), else the municipal center
    (DESIGN.md §9: any district or street center may take a cross_region item)."""
    levels = default_intake_levels(item) + ["municipal"]
    for level in levels:
        for office in origin["offices"]:
            if OFFICE_LEVEL[office["kind"]] == level:
                return str(office["code"])
    raise ValueError(f"{origin['city']['code']} has no office to take {item['code']}")


def cross_region_application(
    origin: dict[str, Any],
    handler: dict[str, Any],
    item: dict[str, Any],
    rng: random.Random,
    *,
    delivery: str,
) -> dict[str, Any]:
    """A complete counter submission at an office of `origin` by an applicant of `handler`'s
    city for `handler`'s item (the clerk uses the partner's item code)."""
    body = application_for(handler, item, rng, channel="counter", delivery=delivery)
    body["office_code"] = origin_office(origin, item)
    if delivery == "postal":
        body["delivery"]["address"] = f"{handler['city']['name']}某路{rng.randint(1, 999)}号"
    return body


@dataclass
class CrossCase:
    """One case across regions and what each region has shown of it."""

    origin: Region
    handler: Region
    item: dict[str, Any]
    body: dict[str, Any]
    case_id: str = ""
    origin_view: dict[str, Any] = field(default_factory=dict)
    handler_view: dict[str, Any] = field(default_factory=dict)
    decided: bool = False
    picked_up: bool = False
    notes: list[str] = field(default_factory=list)
    submitted_at: float = 0.0
    ended_after: float | None = None

    @property
    def delivery(self) -> str:
        return str(self.body["delivery"]["method"])

    @property
    def origin_status(self) -> str:
        return str(self.origin_view.get("status", "-"))

    @property
    def handler_status(self) -> str:
        return str(self.handler_view.get("status", "-"))

    @property
    def ended(self) -> bool:
        return self.origin_status == "closed" and self.handler_status == "closed"


def plan_cross_cases(
    regions: tuple[Region, Region], per_way: int, rng: random.Random
) -> list[CrossCase]:
    """`per_way` cases each way: every cross_region mode of the handler's catalog first, then
    a mix; counter pickup and postal delivery alternate."""
    cases: list[CrossCase] = []
    for origin, handler in (regions, regions[::-1]):
        items = cross_region_items(handler.catalog)
        if not items:
            raise ValueError(f"{handler.name} has no cross_region item in force")
        by_mode: dict[tuple[str, Any], dict[str, Any]] = {}
        for item in items:
            by_mode.setdefault((item["mode"], item.get("delegated_to")), item)
        chosen = list(by_mode.values())
        while len(chosen) < per_way:
            chosen.append(rng.choice(items))
        for n, item in enumerate(chosen[:per_way]):
            delivery = "counter_pickup" if n % 2 == 0 else "postal"
            body = cross_region_application(
                origin.catalog, handler.catalog, item, rng, delivery=delivery
            )
            cases.append(CrossCase(origin=origin, handler=handler, item=item, body=body))
    return cases


@dataclass
class Clients:
    """One acting client per region (each names its own region's ports)."""

    by_city: dict[str, ActingClient]

    def of(self, region: Region) -> ActingClient:
        return self.by_city[region.city]


async def partner_known(
    clients: Clients, origin: Region, handler: Region, *, timeout: float
) -> None:
    """Until `origin`'s intake lists `handler`'s cross_region items (its copy of the mirrored
    catalog: `GET /v1/items?city=`); RuntimeError after `timeout` seconds."""
    expected = len(cross_region_items(handler.catalog))
    deadline = time.monotonic() + timeout
    http = clients.of(origin)
    while time.monotonic() < deadline:
        answer = await http.get(f"{origin.url('intake')}/v1/items", params={"city": handler.city})
        if answer.status_code == 200 and len(answer.json()) == expected:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(
        f"{origin.name}'s intake does not list {handler.name}'s {expected} cross_region items "
        f"after {timeout:.0f}s (GET /v1/items?city={handler.city})"
    )


async def submit(clients: Clients, case: CrossCase) -> httpx.Response:
    http = clients.of(case.origin)
    answer = await http.post(
        f"{case.origin.url('intake')}/v1/cases",
        json=case.body,
        headers={"Idempotency-Key": f"federation-{random.getrandbits(64):016x}"},
    )
    if answer.status_code == 201:
        case.case_id = answer.json()["case_id"]
        case.submitted_at = time.monotonic()
    return answer


async def view(http: httpx.AsyncClient, region: Region, case_id: str) -> dict[str, Any]:
    answer = await http.get(f"{region.url('intake')}/v1/cases/{case_id}")
    if answer.status_code != 200:
        return {}
    body: dict[str, Any] = answer.json()
    return body


async def advance(clients: Clients, case: CrossCase) -> None:
    """Look at the case in both regions and do what the people would: the handling region's
    department decides an accepted case, the origin's clerk hands over a result held there."""
    case.origin_view = await view(clients.of(case.origin), case.origin, case.case_id)
    case.handler_view = await view(clients.of(case.handler), case.handler, case.case_id)
    if case.ended:
        if case.ended_after is None:
            case.ended_after = time.monotonic() - case.submitted_at
        return
    route = case.handler_view.get("route") or {}
    if case.handler_status == "accepted" and not case.decided and route.get("handled_by"):
        answer = await clients.of(case.handler).post(
            f"{case.handler.url('approval')}/v1/cases/{case.case_id}/decisions",
            json={
                "department": route["handled_by"],
                "decision": "approve",
                "reason": "材料齐全，符合法定条件（跨省通办）",
            },
        )
        case.decided = answer.status_code == 200
        if case.decided:
            case.notes.append(f"approved by {route['handled_by']}")
    if (
        case.delivery == "counter_pickup"
        and case.origin_status == "result_issued"
        and not case.picked_up
    ):
        answer = await clients.of(case.origin).post(
            f"{case.origin.url('delivery')}/v1/cases/{case.case_id}/pickup", json={}
        )
        case.picked_up = answer.status_code == 200
        if case.picked_up:
            case.notes.append(f"picked up at {case.body['office_code']}")


async def run_until_closed(
    clients: Clients, cases: list[CrossCase], *, timeout: float, progress: Progress | None
) -> bool:
    """Moves every case on until each is closed in both regions; False at the deadline."""
    task = progress.add_task("closed in both regions", total=len(cases)) if progress else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await asyncio.gather(*(advance(clients, c) for c in cases if not c.ended))
        if progress is not None and task is not None:
            progress.update(task, completed=sum(c.ended for c in cases))
        if all(c.ended for c in cases):
            return True
        await asyncio.sleep(0.5)
    return False


@dataclass(frozen=True)
class Refusal:
    origin: Region
    handler: Region
    item: dict[str, Any]
    status: int
    code: str
    detail: str


async def refused_example(clients: Clients, origin: Region, handler: Region) -> Refusal | None:
    """A `city`-scope item of the partner at the origin's counter, for an applicant of the
    partner: refused at once with a code and guidance (None: the partner has no such item)."""
    items = city_items(handler.catalog)
    if not items:
        return None
    item = items[0]
    body = cross_region_application(
        origin.catalog, handler.catalog, item, random.Random(17), delivery="counter_pickup"
    )
    case = CrossCase(origin=origin, handler=handler, item=item, body=body)
    answer = await submit(clients, case)
    problem = answer.json() if answer.headers.get("content-type", "").endswith("json") else {}
    return Refusal(
        origin,
        handler,
        item,
        answer.status_code,
        str(problem.get("code", "-")),
        str(problem.get("detail", answer.text[:200])),
    )


def report(cases: list[CrossCase], refusal: Refusal | None, console: Console) -> None:
    table = Table(
        "case",
        "origin",
        "handler",
        "item",
        "route (origin)",
        "delivery",
        "status origin",
        "status handler",
        "timeline origin",
        "timeline handler",
        "s",
        title="cases across regions (跨省通办)",
    )
    for case in cases:
        route = case.origin_view.get("route") or {}
        table.add_row(
            case.case_id,
            f"{case.origin.city} {case.body['office_code']}",
            case.handler.city,
            f"{case.item['code']} {case.item['name']} ({case.item['mode']})",
            f"{route.get('path', '-')}/{route.get('level', '-')}/{route.get('handled_by', '-')}",
            case.delivery,
            case.origin_status,
            case.handler_status,
            str(len(case.origin_view.get("timeline", []))),
            str(len(case.handler_view.get("timeline", []))),
            f"{case.ended_after:.1f}" if case.ended_after is not None else "-",
        )
    console.print(table)
    ways = Counter(f"{c.origin.city}->{c.handler.city}" for c in cases)
    closed = sum(c.ended for c in cases)
    console.print(
        f"{len(cases)} cases across regions ({', '.join(f'{w}: {n}' for w, n in ways.items())}): "
        f"{closed} closed in both regions' views, {len(cases) - closed} not"
    )
    if refusal is not None:
        refused = Table(
            "origin", "item of the partner", "answer", "code", "guidance", title="refused"
        )
        refused.add_row(
            f"{refusal.origin.city} {refusal.origin.name}",
            f"{refusal.handler.city} {refusal.item['code']} {refusal.item['name']} (scope city)",
            str(refusal.status),
            refusal.code,
            refusal.detail,
        )
        console.print(refused)


async def run_federation_demo(
    regions: tuple[Region, Region],
    *,
    per_way: int,
    seed: int,
    timeout: float,
    console: Console,
) -> int:
    """0 when every case closed in both regions and the refusal was refused; else 1."""
    rng = random.Random(seed)
    cases = plan_cross_cases(regions, per_way, rng)
    clients = Clients({r.city: r.client() for r in regions})
    try:
        for origin, handler in (regions, regions[::-1]):
            await partner_known(clients, origin, handler, timeout=min(timeout, 90))
        progress = progress_bar(console)
        with progress:
            submitting = progress.add_task("submitting", total=len(cases))
            for case in cases:
                answer = await submit(clients, case)
                if answer.status_code != 201:
                    console.print(
                        f"[red]{case.origin.city} refused {case.item['code']}[/] "
                        f"({answer.status_code}): {answer.text[:300]}"
                    )
                    return 1
                progress.advance(submitting)
            ended = await run_until_closed(clients, cases, timeout=timeout, progress=progress)
        refusal = await refused_example(clients, *regions)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients.by_city.values()))
    report(cases, refusal, console)
    if not ended:
        for case in cases:
            if not case.ended:
                console.print(
                    f"[red]{case.case_id}[/] did not close in both regions within "
                    f"{timeout:.0f}s: origin {case.origin_status}, handler {case.handler_status}"
                )
        return 1
    if refusal is not None and refusal.status != 422:
        console.print(f"[red]the city-scope item was not refused[/] ({refusal.status})")
        return 1
    console.print("[green]every case across regions closed in both regions[/]")
    return 0
