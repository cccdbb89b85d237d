"""`tongban demo`: the case loop end to end on the running services.

Loads the demo catalog, submits realistic cases over every path through the intake API,
answers the non-instant ones the way departments would, collects counter pickups, waits for
every case to end, and prints what happened. Exits non-zero if a case does not end.

Then the bundles of the catalog (一件事一次办, services.cli.demo_bundles): each applied for
once at a counter, its members decided in parallel at their own levels, a dependent member
released with its prerequisite's e-licence, one pickup, one rating.

Then a short act of fewer materials (减材料, DESIGN.md §7): an e-licence issued by one case is
reused by a later case of the same applicant (免提交), a deferred material is brought after
acceptance and releases the held approval (容缺受理), and another is not brought, so the
approval stays held until the due day. The lapse itself (the case ending `terminated`) needs
the services' clock past that day, which only a restart with `TONGBAN_CLOCK_OFFSET_S` gives:
the demo does not wait days nor move the clock of services it leaves running, and says so.
"""

from __future__ import annotations

import asyncio
import hashlib
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
from services.cli.demo_bundles import bundle_act
from services.cli.devclient import (
    APPROVAL_PORT,
    DELIVERY_PORT,
    INTAKE_PORT,
    ROUTING_PORT,
    ActingClient,
    submit_new,
    wait_listed,
)
from services.common.principals import Role
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
    answer: dict[str, Any] = field(default_factory=dict)  # the 201 answer of the submission


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


def progress_bar(console: Console) -> Progress:
    """The demos' progress: a named bar per stage, done/total and the time it has taken."""
    return Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
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
    lapse_file: Path | None = None,
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
            f"{len(catalog['items'])} items, {len(catalog.get('bundles', []))} bundles"
        )
        await wait_listed(
            http, f"{endpoints.intake}/v1/items", len(catalog["items"]), "the catalog"
        )
        cases = plan_cases(catalog, count, rng)
        progress = progress_bar(console)
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
    async with ActingClient(timeout=30) as http:
        if await bundle_act(http, endpoints, catalog, rng, timeout, console) != 0:
            return 1
        return await fewer_materials(
            http, endpoints, catalog, rng, timeout, console, lapse_file=lapse_file
        )


async def _submit(http: httpx.AsyncClient, endpoints: Endpoints, case: DemoCase) -> None:
    body = await submit_new(http, f"{endpoints.intake}/v1/cases", case.body)
    case.answer = body
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


# -- fewer materials (减材料) -------------------------------------------------------------------


@dataclass
class ReformCase:
    """One case of the act: what it shows, and the status it is to end the act in."""

    shows: str
    case: DemoCase
    ends_in: str
    bring_deferred: bool = False
    brought: bool = False


def reform_items(catalog: dict[str, Any], today: date) -> dict[str, dict[str, Any]] | None:
    """The items the act needs, by role: `issues` (its result is an e-licence of a type),
    `takes` (a material of that type), `defers` (a deferrable material) and `commits` (a
    material that allows a commitment, or None); None if the catalog has no such items."""
    items = [i for i in catalog["items"] if in_force(i, today)]
    for issues in items:
        kind = (issues.get("result") or {}).get("license_type")
        takes = [
            i
            for i in items
            if kind and any(m.get("license_type") == kind for m in i.get("materials", []))
        ]
        defers = [i for i in items if any(m.get("deferrable") for m in i.get("materials", []))]
        commits = [i for i in items if any(m.get("commitment") for m in i.get("materials", []))]
        if takes and defers:
            return {
                "issues": issues,
                "takes": takes[0],
                "defers": defers[0],
                "commits": commits[0] if commits else None,
            }
    return None


async def fewer_materials(
    http: httpx.AsyncClient,
    endpoints: Endpoints,
    catalog: dict[str, Any],
    rng: random.Random,
    timeout: float,
    console: Console,
    lapse_file: Path | None = None,
) -> int:
    """The act: a licence issued and reused, a deferral completed, a deferral outstanding."""
    items = reform_items(catalog, date.today())
    if items is None:
        console.print("no items with licence types and deferrable materials: no reform act")
        return 0
    console.rule("fewer materials (减材料): reuse, deferral, commitment")
    issuing = DemoCase(
        item=items["issues"],
        body=application_for(
            catalog, items["issues"], rng, channel="online", delivery="electronic"
        ),
    )
    await _submit(http, endpoints, issuing)
    await _until(http, endpoints, [ReformCase("licence issued", issuing, "closed")], timeout)
    kind = items["issues"]["result"]["license_type"]
    holder = issuing.body["applicant"]
    licence = await _licence_held(http, endpoints, holder["id_number"], kind)

    taking = _reform_case(catalog, items["takes"], rng, defer=False)
    taking.body["applicant"] |= {"name": holder["name"], "id_number": holder["id_number"]}
    # The applicant does not bring what the library holds: intake attaches it (免提交).
    taking.body["materials"] = [
        m
        for m in taking.body["materials"]
        if not any(
            s["code"] == m["code"] and s.get("license_type") == kind
            for s in items["takes"]["materials"]
        )
    ]
    act = [
        ReformCase("licence issued", issuing, "closed"),
        ReformCase("licence reused (免提交)", taking, "closed"),
        ReformCase(
            "deferral completed (容缺)",
            _reform_case(catalog, items["defers"], rng),
            "closed",
            bring_deferred=True,
        ),
        ReformCase(
            "deferral outstanding", _reform_case(catalog, items["defers"], rng), "approval_held"
        ),
    ]
    commitments = _commitment_cases(catalog, items["commits"], rng)
    act += commitments
    for reform in act[1:]:
        await _submit(http, endpoints, reform.case)
    ended = await _until(http, endpoints, act, timeout)
    if ended and commitments:
        ended = await _verify_commitments(http, endpoints, commitments, timeout)
    views = [(await http.get(f"{endpoints.intake}/v1/cases/{r.case.case_id}")).json() for r in act]
    _report_reforms(act, views, licence, console)
    reused = act[1].case.answer.get("reused_licenses", [])
    if not ended or not reused:
        console.print("[red]the fewer-materials act did not end as it should[/]")
        return 1
    outstanding = act[3].case.case_id
    console.print(
        f"outstanding deferral: {outstanding}. It ends [bold]terminated[/] once its due day is "
        "over (never delivered): `make demo` then restarts the services with their clock "
        "TONGBAN_CLOCK_OFFSET_S ahead and shows it (`tongban demo-lapse CASE`)."
    )
    if lapse_file is not None:
        lapse_file.parent.mkdir(parents=True, exist_ok=True)
        lapse_file.write_text(outstanding + "\n", encoding="utf-8")
    return 0


def _commitment_cases(
    catalog: dict[str, Any], item: dict[str, Any] | None, rng: random.Random
) -> list[ReformCase]:
    """Two cases whose applicant commits (告知承诺) instead of bringing a material: one is
    found true at verification, one false."""
    if item is None:
        return []
    allowed = {m["code"] for m in item["materials"] if m.get("commitment")}
    cases = []
    for shows in ("commitment confirmed (告知承诺)", "commitment breached"):
        case = _reform_case(catalog, item, rng, defer=False)
        case.body["materials"] = [
            {"code": m["code"], "commitment": True} if m["code"] in allowed else m
            for m in case.body["materials"]
        ]
        cases.append(ReformCase(shows, case, "closed"))
    return cases


async def _verify_commitments(
    http: httpx.AsyncClient, endpoints: Endpoints, cases: list[ReformCase], timeout: float
) -> bool:
    """The department checks the commitments after approval: the first holds, the second
    is false, so its decision and licence are revoked and its applicant barred."""
    for reform, result in zip(cases, ("confirmed", "breached"), strict=True):
        department = (reform.case.route or {}).get("handled_by")
        headers_for = getattr(http, "headers_for", None)
        headers = headers_for(Role.reviewer, department) if headers_for is not None else {}
        answer = await http.post(
            f"{endpoints.approval}/v1/cases/{reform.case.case_id}/verification",
            json={
                "result": result,
                "note": "现场核查" + ("属实" if result == "confirmed" else "不实"),
            },
            headers=headers,
        )
        if answer.status_code != 200:
            reform.case.notes.append(f"verification answered {answer.status_code}")
            return False
        reform.case.notes.append(f"verification: {result}")
    cases[1].ends_in = "revoked"
    return await _until(http, endpoints, cases, timeout)


def _reform_case(
    catalog: dict[str, Any], item: dict[str, Any], rng: random.Random, *, defer: bool = True
) -> DemoCase:
    """A complete application for `item` by post; with `defer`, its deferrable materials are
    promised instead of brought."""
    body = application_for(catalog, item, rng, delivery="electronic")
    if defer:
        deferrable = {m["code"] for m in item["materials"] if m.get("deferrable")}
        body["materials"] = [
            {"code": m["code"], "deferred": True} if m["code"] in deferrable else m
            for m in body["materials"]
        ]
    return DemoCase(item=item, body=body)


async def _licence_held(
    http: httpx.AsyncClient, endpoints: Endpoints, holder: str, kind: str
) -> str:
    """The licence id of `kind` the holder has in intake's copy of the library, once there
    (delivery publishes it on license.v1 when it issues the result)."""
    for _ in range(100):
        answer = await http.get(f"{endpoints.intake}/v1/licenses", params={"holder": holder})
        if answer.status_code == 200:
            for row in answer.json():
                if row["license_type"] == kind and row["status"] == "valid":
                    return str(row["license_id"])
        await asyncio.sleep(0.2)
    raise RuntimeError(f"no {kind} licence in intake's library 20 s after it was issued")


async def _until(
    http: httpx.AsyncClient, endpoints: Endpoints, act: list[ReformCase], timeout: float
) -> bool:
    """Moves the act's cases on (decisions, pickups, deferred materials brought) until each is
    in the status it is to end in; False if one is not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = [r for r in act if r.case.status != r.ends_in]
        if not waiting:
            return True
        await asyncio.gather(*(_advance(http, endpoints, r.case) for r in waiting))
        for reform in waiting:
            if (
                reform.bring_deferred
                and not reform.brought
                and reform.case.status == "approval_held"
            ):
                await _bring_deferred(http, endpoints, reform)
        await asyncio.sleep(0.3)
    return False


async def _bring_deferred(
    http: httpx.AsyncClient, endpoints: Endpoints, reform: ReformCase
) -> None:
    owed = [d["code"] for d in reform.case.answer.get("deferred_materials", [])]
    materials = [
        {"code": code, "sha256": hashlib.sha256(f"{code}{time.time()}".encode()).hexdigest()}
        for code in owed
    ]
    answer = await http.post(
        f"{endpoints.intake}/v1/cases/{reform.case.case_id}/materials",
        json={"materials": materials},
    )
    reform.brought = answer.status_code == 200
    if reform.brought:
        reform.case.notes.append(f"brought {', '.join(owed)} while held")


def _report_reforms(
    act: list[ReformCase], views: list[dict[str, Any]], licence: str, console: Console
) -> None:
    table = Table("shows", "case", "item", "materials", "status")
    for reform, view in zip(act, views, strict=True):
        lines = [f"issued {licence}"] if reform is act[0] else []
        lines += [
            f"{r['material']} ← {r['license_id']}"
            for r in reform.case.answer.get("reused_licenses", [])
        ]
        lines += [
            f"{m['code']} committed (告知承诺)"
            for m in reform.case.body["materials"]
            if m.get("commitment")
        ]
        lines += [
            f"{d['code']} deferred, due {d['due'] or '-'}, "
            + ("received" if d["received"] else "not received")
            for d in view.get("deferred_materials", [])
        ]
        lines += reform.case.notes
        table.add_row(
            reform.shows,
            reform.case.case_id,
            f"{reform.case.item['code']} {reform.case.item['name']}",
            "\n".join(lines) or "-",
            view["status"],
        )
    console.print(table)


async def watch_lapse(
    case_id: str, *, timeout: float, endpoints: Endpoints, console: Console
) -> int:
    """`tongban demo-lapse`: wait (on services whose clock runs past the due day) until the
    demo's outstanding deferral is `terminated`, and show its deferred materials and last
    events; 1 if it is not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    async with ActingClient(timeout=30) as http:
        view: dict[str, Any] = {}
        while time.monotonic() < deadline:
            answer = await http.get(f"{endpoints.intake}/v1/cases/{case_id}")
            view = answer.json() if answer.status_code == 200 else {}
            if view.get("status") == "terminated":
                break
            await asyncio.sleep(0.5)
    table = Table("case", "deferred", "status", "last events")
    table.add_row(
        case_id,
        "\n".join(
            f"{d['code']} due {d['due'] or '-'}, "
            + ("received" if d["received"] else "not received")
            for d in view.get("deferred_materials", [])
        )
        or "-",
        str(view.get("status", "?")),
        "\n".join(e["type"] for e in view.get("timeline", [])[-3:]) or "-",
    )
    console.print(table)
    if view.get("status") != "terminated":
        console.print(f"[red]{case_id} did not lapse within {timeout:.0f} s[/]")
        return 1
    console.print("the deferral lapsed: the case is terminated and is never delivered")
    return 0
