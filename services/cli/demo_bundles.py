"""`tongban demo`'s bundle act (一件事一次办, DESIGN.md §8): every bundle of the catalog applied
for at one counter, its members handled in parallel at their own levels and departments,
delivered once and rated once.

For each bundle in force: one form with the answers to its questions (the last question of
the last bundle answered no, so a member is left out), one set of materials (never what a
prerequisite member issues as an e-licence), delivery by counter pickup. Then, as departments
and the counter would: each member decided through approval's REST once accepted (instant
ones decide themselves), a dependent member released by intake with its prerequisite's
licence, one pickup at the office that took the bundle once every member has its result, one
rating. Prints a table of members (where each went and when it was accepted, showing them run
side by side) and one row per bundle; returns 1 if a bundle does not close in time.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

import httpx
from rich.console import Console
from rich.table import Table

from services.cli.applicants import bundle_application_for, default_answers
from services.cli.devclient import ActingClient, submit_new, wait_listed

if TYPE_CHECKING:
    from services.cli.demo import Endpoints

MEMBER_ENDED = {"closed", "withdrawn", "terminated", "revoked"}
RATING = {"rating": "very_satisfied", "comment": "一次告知、一表申请、一窗受理、一次办结"}


@dataclass
class DemoMember:
    case_id: str
    item_code: str
    after: list[str]
    route: dict[str, Any] | None = None
    status: str = ""
    seen: list[str] = field(default_factory=list)  # statuses in the order the demo saw them
    accepted_after: float | None = None
    decided: bool = False
    licences: list[str] = field(default_factory=list)


@dataclass
class DemoBundle:
    bundle: dict[str, Any]
    body: dict[str, Any]
    bundle_id: str = ""
    submitted_at: float = 0.0
    status: str = "new"
    members: dict[str, DemoMember] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    deadline: str | None = None
    picked_up: bool = False
    rated_for: list[str] | None = None
    closed_after: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return (
            self.status == "closed"
            and self.rated_for is not None
            and all(m.status in MEMBER_ENDED for m in self.members.values())
        )


def bundles_in_force(catalog: dict[str, Any], today: date) -> list[dict[str, Any]]:
    iso = today.isoformat()
    return [
        b
        for b in catalog.get("bundles", [])
        if str(b.get("effective_from") or "0000") <= iso
        and (b.get("effective_to") is None or str(b["effective_to"]) >= iso)
    ]


def plan_bundles(catalog: dict[str, Any], rng: random.Random) -> list[DemoBundle]:
    """One application per bundle in force; the last one's last question answered no."""
    chosen = bundles_in_force(catalog, date.today())
    planned = []
    for n, bundle in enumerate(chosen):
        answers = default_answers(bundle)
        if n == len(chosen) - 1 and bundle.get("questions"):
            last = bundle["questions"][-1]
            if last.get("type", "boolean") == "boolean":
                answers[last["code"]] = False
        body = bundle_application_for(catalog, bundle, rng, answers=answers)
        planned.append(DemoBundle(bundle=bundle, body=body))
    return planned


async def bundle_act(
    http: ActingClient,
    endpoints: Endpoints,
    catalog: dict[str, Any],
    rng: random.Random,
    timeout: float,
    console: Console,
) -> int:
    planned = plan_bundles(catalog, rng)
    if not planned:
        console.print("no bundle in force in the catalog: no bundle act")
        return 0
    console.rule("bundles (一件事一次办): one form, members in parallel, one delivery")
    offered = len(bundles_in_force(catalog, date.today()))
    await wait_listed(http, f"{endpoints.intake}/v1/bundles", offered, "the bundles")
    for demo in planned:
        await _submit(http, endpoints, demo)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(d.done for d in planned):
        await asyncio.gather(*(_advance(http, endpoints, d) for d in planned if not d.done))
        await asyncio.sleep(0.3)
    for demo in planned:
        await _licences_taken(http, endpoints, demo)
    _report(planned, {i["code"]: i["name"] for i in catalog["items"]}, console)
    open_ = [d for d in planned if not d.done]
    if open_:
        console.print(
            f"[red]{len(open_)} bundle(s) did not close within {timeout:.0f}s: "
            + ", ".join(f"{d.bundle_id} ({d.status})" for d in open_)
            + "[/]"
        )
        return 1
    console.print(f"[green]all {len(planned)} bundles delivered once, closed and rated[/]")
    return 0


async def _submit(http: httpx.AsyncClient, endpoints: Endpoints, demo: DemoBundle) -> None:
    body = await submit_new(http, f"{endpoints.intake}/v1/bundles", demo.body)
    demo.bundle_id, demo.status = body["bundle_id"], body["status"]
    demo.excluded = list(body.get("excluded", []))
    demo.submitted_at = time.monotonic()
    for m in body["members"]:  # as the counter saw them: a dependent one is `waiting`
        demo.members[m["case_id"]] = DemoMember(
            m["case_id"], m["item_code"], [], status=m["status"], seen=[m["status"]]
        )
    if body.get("missing_materials"):
        demo.notes.append("missing " + ", ".join(body["missing_materials"]))


async def _advance(http: httpx.AsyncClient, endpoints: Endpoints, demo: DemoBundle) -> None:
    """One look at the bundle, and whatever a department or the counter would do now."""
    answer = await http.get(f"{endpoints.intake}/v1/bundles/{demo.bundle_id}")
    if answer.status_code != 200:
        return
    view = answer.json()
    demo.status, demo.deadline = view["status"], view.get("deadline")
    now = time.monotonic() - demo.submitted_at
    for m in view["members"]:
        member = demo.members.setdefault(m["case_id"], DemoMember(m["case_id"], m["item_code"], []))
        member.after, member.route = m.get("after") or [], m.get("route") or member.route
        if m["status"] != member.status:
            member.status = m["status"]
            member.seen.append(m["status"])
        if member.accepted_after is None and m["status"] not in (
            "waiting",
            "awaiting_supplement",
            "submitted",
            "routed",
            "route_failed",
        ):
            member.accepted_after = now
        if m["status"] == "accepted" and not member.decided and member.route:
            decided = await http.post(
                f"{endpoints.approval}/v1/cases/{member.case_id}/decisions",
                json={
                    "department": member.route["handled_by"],
                    "decision": "approve",
                    "reason": "材料齐全，符合法定条件",
                },
            )
            member.decided = decided.status_code == 200
    if demo.status == "in_progress" and not demo.picked_up:
        await _pick_up(http, endpoints, demo)
    if demo.status in ("delivered", "closed") and demo.rated_for is None:
        rated = await http.post(
            f"{endpoints.delivery}/v1/bundles/{demo.bundle_id}/rating", json=RATING
        )
        if rated.status_code == 201:
            demo.rated_for = list(rated.json().get("departments", []))
    if demo.status == "closed" and demo.closed_after is None:
        demo.closed_after = now


async def _pick_up(http: httpx.AsyncClient, endpoints: Endpoints, demo: DemoBundle) -> None:
    """The one pickup, once delivery says every member has its result or has ended."""
    results = await http.get(f"{endpoints.delivery}/v1/bundles/{demo.bundle_id}/results")
    if results.status_code != 200 or results.json().get("ready_at") is None:
        return
    office = demo.body["office_code"]
    answer = await http.post(
        f"{endpoints.delivery}/v1/bundles/{demo.bundle_id}/pickup", json={"office_code": office}
    )
    if answer.status_code == 200:
        demo.picked_up = True
        handed = len(answer.json().get("results", []))
        demo.notes.append(f"one pickup at {office}: {handed} results")


async def _licences_taken(http: httpx.AsyncClient, endpoints: Endpoints, demo: DemoBundle) -> None:
    """The e-licences a dependent member took from its prerequisites (approval's view)."""
    for member in demo.members.values():
        if not member.after:
            continue
        answer = await http.get(f"{endpoints.approval}/v1/cases/{member.case_id}")
        if answer.status_code == 200:
            member.licences = [
                f"{x['material']} ← {x['license_id']}"
                for x in answer.json().get("licensed_materials", [])
            ]


def _report(planned: list[DemoBundle], names: dict[str, str], console: Console) -> None:
    table = Table("bundle", "member", "item", "level · path", "handled by", "waited for", "seen")
    for demo in planned:
        codes = {m.case_id: m.item_code for m in demo.members.values()}
        for member in demo.members.values():
            route = member.route or {}
            waited = ", ".join(codes.get(c, c) for c in member.after)
            accepted = (
                f"accepted +{member.accepted_after:.1f}s"
                if member.accepted_after is not None
                else ""
            )
            table.add_row(
                demo.bundle["code"],
                member.case_id,
                f"{member.item_code} {names.get(member.item_code, '')}",
                f"{route.get('level', '-')} · {route.get('path', '-')}",
                route.get("handled_by", "-"),
                "\n".join([waited, *member.licences]) if waited else "",
                " → ".join(member.seen) + (f"\n{accepted}" if accepted else ""),
            )
    console.print(table)
    summary = Table(
        "bundle", "name", "members", "left out", "departments", "levels", "delivery", "rated for",
        "deadline", "status", "s to close",
    )  # fmt: skip
    for demo in planned:
        routes = [m.route for m in demo.members.values() if m.route]
        summary.add_row(
            demo.bundle_id,
            f"{demo.bundle['code']} {demo.bundle['name']}",
            str(len(demo.members)),
            ", ".join(demo.excluded) or "-",
            str(len({r["handled_by"] for r in routes})),
            ", ".join(sorted({r["level"] for r in routes})),
            "\n".join(demo.notes) or "-",
            ", ".join(demo.rated_for or []) or "-",
            demo.deadline or "-",
            demo.status,
            f"{demo.closed_after:.1f}" if demo.closed_after is not None else "-",
        )
    console.print(summary)
