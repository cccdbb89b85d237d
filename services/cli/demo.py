"""`tongban demo`: the case loop end to end on the running services.

Loads the demo catalog, submits realistic cases over every path through the intake API,
answers the non-instant ones the way departments would, collects counter pickups, waits for
every case to end, and prints what happened. Exits non-zero if a case does not end.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.cli.applicants import application_for
from services.cli.devclient import (
    APPROVAL_PORT,
    DELIVERY_PORT,
    INTAKE_PORT,
    ROUTING_PORT,
    ActingClient,
)
from services.operators.catalog_file import load_catalog_file

ENDED = {"closed", "withdrawn"}


@dataclass
class DemoCase:
    item: dict[str, Any]
    body: dict[str, Any]
    case_id: str = ""
    submitted_at: float = 0.0
    closed_after: float | None = None
    status: str = "new"
    route: dict[str, Any] | None = None
    plan: str = "approve"  # approve | deny | withdraw | supplement
    decided: bool = False
    picked_up: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Endpoints:
    # The dev ports, moved by SERVICES_PORT_OFFSET as deploy/local/services.sh moves them.
    intake: str = f"http://127.0.0.1:{INTAKE_PORT}"
    routing: str = f"http://127.0.0.1:{ROUTING_PORT}"
    approval: str = f"http://127.0.0.1:{APPROVAL_PORT}"
    delivery: str = f"http://127.0.0.1:{DELIVERY_PORT}"


def in_force(item: dict[str, Any], today: date) -> bool:
    start, end = item.get("effective_from"), item.get("effective_to")
    return (start is None or str(start) <= today.isoformat()) and (
        end is None or str(end) >= today.isoformat()
    )


def plan_cases(catalog: dict[str, Any], count: int, rng: random.Random) -> list[DemoCase]:
    """Every path first (each mode, both delegation levels, instant or not), then a mix."""
    today = date.today()
    items = [i for i in catalog["items"] if in_force(i, today)]
    by_path: dict[tuple[str, Any], list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        by_path[(item["mode"], item.get("delegated_to"))].append(item)
    chosen = [rng.choice(group) for _, group in sorted(by_path.items(), key=str)]
    while len(chosen) < count:
        chosen.append(rng.choice(items))
    cases = []
    for n, item in enumerate(chosen[:count]):
        plan = "approve"
        if not item.get("instant"):
            plan = rng.choices(["approve", "deny"], weights=[9, 1])[0]
        complete = True
        if n % 11 == 5 and any(m.get("required", True) for m in item.get("materials", [])):
            plan, complete = "supplement", False
        if n % 17 == 8:
            plan = "withdraw"
        # Some applicants go to a counter in another district (同城通办).
        body = application_for(
            catalog,
            item,
            rng,
            complete=complete,
            office_anywhere=item["mode"] == "delegated" and n % 3 == 0,
        )
        cases.append(DemoCase(item=item, body=body, plan=plan))
    return cases


async def run_demo(
    catalog_file: Path,
    *,
    count: int,
    seed: int,
    timeout: float,
    endpoints: Endpoints,
    console: Console,
) -> int:
    rng = random.Random(seed)
    catalog = load_catalog_file(catalog_file)
    async with ActingClient(timeout=30) as http:
        loaded = await http.post(f"{endpoints.routing}/v1/catalog", json=catalog)
        if loaded.status_code != 201:
            console.print(f"[red]catalog refused[/]: {loaded.text}")
            return 2
        version = loaded.json()["version"]
        console.print(
            f"catalog [bold]{catalog['city']['name']}[/] version {version}: "
            f"{len(catalog['items'])} items"
        )
        await _wait_items(http, endpoints, len(catalog["items"]))
        cases = plan_cases(catalog, count, rng)
        progress = Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        with progress:
            submitting = progress.add_task("submitting", total=len(cases))
            for case in cases:
                await _submit(http, endpoints, case)
                progress.advance(submitting)
            ending = progress.add_task("waiting for results", total=len(cases))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                await asyncio.gather(
                    *(_advance(http, endpoints, c) for c in cases if c.status not in ENDED)
                )
                progress.update(ending, completed=sum(c.status in ENDED for c in cases))
                if all(c.status in ENDED for c in cases):
                    break
                await asyncio.sleep(0.3)
    _report(cases, console)
    stuck = [c for c in cases if c.status not in ENDED]
    if stuck:
        console.print(f"[red]{len(stuck)} case(s) did not end within {timeout:.0f}s[/]")
        return 1
    console.print(f"[green]all {len(cases)} cases ended[/]")
    return 0


async def _wait_items(http: httpx.AsyncClient, endpoints: Endpoints, expected: int) -> None:
    for _ in range(100):
        answer = await http.get(f"{endpoints.intake}/v1/items")
        if answer.status_code == 200 and len(answer.json()) == expected:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("intake did not receive the catalog in 20 s")


async def _submit(http: httpx.AsyncClient, endpoints: Endpoints, case: DemoCase) -> None:
    answer = await http.post(
        f"{endpoints.intake}/v1/cases",
        json=case.body,
        headers={"Idempotency-Key": f"demo-{id(case)}-{time.time()}"},
    )
    if answer.status_code != 201:
        raise RuntimeError(f"submission refused ({answer.status_code}): {answer.text}")
    body = answer.json()
    case.case_id, case.status = body["case_id"], body["status"]
    case.submitted_at = time.monotonic()
    if case.status == "awaiting_supplement":
        # The applicant comes back with everything the notification listed, at once.
        materials = [{"code": code} for code in body["missing_materials"]]
        await http.post(
            f"{endpoints.intake}/v1/cases/{case.case_id}/materials", json={"materials": materials}
        )
        case.notes.append(f"supplemented {len(materials)}")


async def _advance(http: httpx.AsyncClient, endpoints: Endpoints, case: DemoCase) -> None:
    view = (await http.get(f"{endpoints.intake}/v1/cases/{case.case_id}")).json()
    case.status, case.route = view["status"], view.get("route")
    if case.status in ENDED:
        if case.closed_after is None:
            case.closed_after = time.monotonic() - case.submitted_at
        return
    if case.plan == "withdraw" and case.status in ("submitted", "routed", "accepted"):
        await http.post(
            f"{endpoints.intake}/v1/cases/{case.case_id}/withdraw", json={"reason": "申请人撤回"}
        )
        return
    if case.status == "accepted" and not case.decided and case.route:
        decision: dict[str, Any] = {
            "department": case.route["handled_by"],
            "decision": "approve",
            "reason": "材料齐全，符合法定条件",
        }
        if case.plan == "deny":
            decision |= {
                "decision": "deny",
                "reason": "不符合法定条件",
                "legal_basis": "《中华人民共和国行政许可法》第三十八条第二款",
            }
        answer = await http.post(
            f"{endpoints.approval}/v1/cases/{case.case_id}/decisions", json=decision
        )
        case.decided = answer.status_code == 200
    if case.status == "result_issued" and not case.picked_up:
        answer = await http.post(f"{endpoints.delivery}/v1/cases/{case.case_id}/pickup", json={})
        case.picked_up = answer.status_code == 200


def _report(cases: list[DemoCase], console: Console) -> None:
    table = Table("case", "item", "path", "level", "handled by", "same city", "status", "s")
    for case in cases:
        route = case.route or {}
        table.add_row(
            case.case_id,
            f"{case.item['code']} {case.item['name']}",
            route.get("path", "-"),
            route.get("level", "-"),
            route.get("handled_by", "-"),
            "yes" if route.get("same_city") else "",
            case.status,
            f"{case.closed_after:.1f}" if case.closed_after is not None else "-",
        )
    console.print(table)
    summary = Table("path", "cases", "closed", "withdrawn", "other", "mean s to end")
    per_path: dict[str, list[DemoCase]] = defaultdict(list)
    for case in cases:
        per_path[(case.route or {}).get("path", "(unrouted)")].append(case)
    for path, group in sorted(per_path.items()):
        statuses = Counter(c.status for c in group)
        times = [c.closed_after for c in group if c.closed_after is not None]
        summary.add_row(
            path,
            str(len(group)),
            str(statuses["closed"]),
            str(statuses["withdrawn"]),
            str(len(group) - statuses["closed"] - statuses["withdrawn"]),
            f"{sum(times) / len(times):.1f}" if times else "-",
        )
    console.print(summary)
