"""Who may see and do what, generated as a whole matrix: role x own/other scope x endpoint,
each outcome asserted against the running services (real tokens, real data)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from services.cli.applicants import application_for
from services.cli.devclient import ActingClient
from services.common.auth import Role
from tests.e2e.conftest import (
    APPROVAL,
    DELIVERY,
    INTAKE,
    ROUTING,
    decide_when_listed,
    items_where,
    wait_status,
)

pytestmark = pytest.mark.e2e

# Who is calling: the role, and whether the scope is the object's own, another, or none.
CALLERS = (
    "clerk_own",
    "clerk_other",
    "reviewer_own",
    "reviewer_other",
    "operator",
    "admin",
    "anonymous",
    "forged",
)


@dataclass
class World:
    """One delivered counter-pickup case, and the scopes around it."""

    case_id: str
    office: str
    other_office: str
    department: str
    other_department: str
    license_id: str | None
    application: dict[str, Any]


@pytest.fixture(scope="module")
async def world(catalog: dict[str, Any]) -> World:
    rng = random.Random("access-matrix")
    item = rng.choice(
        items_where(catalog, lambda i: not i.get("instant") and i["mode"] == "municipal")
    )
    application = application_for(catalog, item, rng, channel="counter", delivery="counter_pickup")
    async with ActingClient(timeout=30) as http:
        created = await http.post(f"{INTAKE}/v1/cases", json=application)
        assert created.status_code == 201, created.text
        case_id = created.json()["case_id"]
        view = await wait_status(http, case_id, "accepted")
        department = view["route"]["handled_by"]
        decided = await decide_when_listed(http, case_id, department, {"decision": "approve"})
        assert decided.status_code == 200, decided.text
        await wait_status(http, case_id, "result_issued")
        result = (await http.get(f"{DELIVERY}/v1/results/{case_id}")).json()
    office = application["office_code"]
    return World(
        case_id=case_id,
        office=office,
        other_office=next(o["code"] for o in catalog["offices"] if o["code"] != office),
        department=department,
        other_department=next(d["code"] for d in catalog["departments"] if d["code"] != department),
        license_id=result["result"].get("license_id"),
        application=application,
    )


def headers(client: ActingClient, caller: str, w: World) -> dict[str, str]:
    table: dict[str, tuple[Role, str | None]] = {
        "clerk_own": (Role.clerk, w.office),
        "clerk_other": (Role.clerk, w.other_office),
        "reviewer_own": (Role.reviewer, w.department),
        "reviewer_other": (Role.reviewer, w.other_department),
        "operator": (Role.operator, None),
        "admin": (Role.admin, None),
    }
    if caller == "anonymous":
        return {"Authorization": ""}
    if caller == "forged":
        return {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"}
    return client.headers_for(*table[caller])


@dataclass(frozen=True)
class Endpoint:
    name: str
    call: Callable[[ActingClient, World, dict[str, str]], Any]
    allowed: dict[str, set[int]]  # caller -> accepted statuses; everyone else: 403


def get(url: Callable[[World], str], **params: Any) -> Callable[..., Any]:
    return lambda c, w, h: c.get(url(w), headers=h, params=params or None)


def post(url: Callable[[World], str], body: Callable[[World], Any]) -> Callable[..., Any]:
    return lambda c, w, h: c.post(url(w), headers=h, json=body(w))


def _fixed(url: str) -> Callable[[World], str]:
    return lambda _w: url


OK = {200}
READERS = {"clerk_own": OK, "reviewer_own": OK, "operator": OK, "admin": OK}
OVERSEERS = {"operator": OK, "admin": OK}
EVERYONE = {c: OK for c in CALLERS if c not in ("anonymous", "forged")}

ENDPOINTS = [
    Endpoint("intake.get_case", get(lambda w: f"{INTAKE}/v1/cases/{w.case_id}"), READERS),
    Endpoint("intake.items", get(lambda w: f"{INTAKE}/v1/items"), EVERYONE),
    Endpoint(
        "intake.submit",
        post(lambda w: f"{INTAKE}/v1/cases", lambda w: w.application),
        {"clerk_own": {201}},
    ),
    Endpoint(
        "intake.materials",
        post(
            lambda w: f"{INTAKE}/v1/cases/{w.case_id}/materials",
            lambda w: {"materials": [{"code": w.application["materials"][0]["code"]}]},
        ),
        {"clerk_own": {409}},
    ),  # allowed, but the case is not waiting for materials
    Endpoint(
        "intake.withdraw",
        post(lambda w: f"{INTAKE}/v1/cases/{w.case_id}/withdraw", lambda w: {}),
        {"clerk_own": {409}},
    ),  # allowed, but decided cases cannot be withdrawn
    Endpoint(
        "routing.preview",
        post(lambda w: f"{ROUTING}/v1/routes/preview", lambda w: w.application),
        {"clerk_own": OK, "clerk_other": OK, "operator": OK, "admin": OK},
    ),
    Endpoint("routing.triage", get(lambda w: f"{ROUTING}/v1/triage"), OVERSEERS),
    Endpoint(
        "routing.retry",
        post(lambda w: f"{ROUTING}/v1/triage/{w.case_id}/retry", lambda w: None),
        {"operator": {409}, "admin": {409}},
    ),  # allowed, but the case is routed
    Endpoint("routing.catalog_version", get(lambda w: f"{ROUTING}/v1/catalog/version"), EVERYONE),
    Endpoint(
        "approval.worklist",
        get(lambda w: f"{APPROVAL}/v1/worklist", department="__DEPT__"),
        {"reviewer_own": OK, "operator": OK, "admin": OK},
    ),
    Endpoint(
        "approval.decide",
        post(
            lambda w: f"{APPROVAL}/v1/cases/{w.case_id}/decisions",
            lambda w: {"department": w.department, "decision": "approve"},
        ),
        {"reviewer_own": {409}},
    ),  # allowed, but already decided
    Endpoint(
        "approval.get_case",
        get(lambda w: f"{APPROVAL}/v1/cases/{w.case_id}"),
        {"reviewer_own": OK, "operator": OK, "admin": OK},
    ),
    Endpoint("approval.handovers", get(lambda w: f"{APPROVAL}/v1/handovers/refused"), OVERSEERS),
    Endpoint("approval.sla_board", get(lambda w: f"{APPROVAL}/v1/sla/board"), OVERSEERS),
    Endpoint("approval.sla_cases", get(lambda w: f"{APPROVAL}/v1/sla/cases"), OVERSEERS),
    Endpoint("delivery.result", get(lambda w: f"{DELIVERY}/v1/results/{w.case_id}"), READERS),
    Endpoint("delivery.stats", get(lambda w: f"{DELIVERY}/v1/ratings/stats"), OVERSEERS),
    Endpoint(
        "delivery.verify",
        get(lambda w: f"{DELIVERY}/v1/licenses/{w.license_id or 'none'}/verify"),
        EVERYONE,
    ),
    *(
        Endpoint(f"{name}.audit", get(_fixed(f"{base}/v1/audit")), {"admin": OK})
        for name, base in (
            ("intake", INTAKE),
            ("routing", ROUTING),
            ("approval", APPROVAL),
            ("delivery", DELIVERY),
        )
    ),
]


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
async def test_access_matrix(world: World, caller: str, endpoint: Endpoint) -> None:
    async with ActingClient(timeout=30) as client:
        call = endpoint.call
        if endpoint.name == "approval.worklist":
            call = get(lambda w: f"{APPROVAL}/v1/worklist", department=world.department)
        answer: httpx.Response = await call(client, world, headers(client, caller, world))
    if caller in ("anonymous", "forged"):
        expected = {401}
    else:
        expected = endpoint.allowed.get(caller, {403})
    assert answer.status_code in expected, (endpoint.name, caller, answer.text[:300])
    if answer.status_code in (401, 403):
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["code"]
    if answer.status_code == 401:
        assert answer.headers["www-authenticate"].startswith("Bearer")


async def test_operators_see_personal_data_masked_and_clerks_in_clear(world: World) -> None:
    async with ActingClient(timeout=30) as client:
        url = f"{INTAKE}/v1/cases/{world.case_id}"
        clerk = await client.get(url, headers=client.headers_for(Role.clerk, world.office))
        operator = (await client.get(url, headers=client.headers_for(Role.operator))).json()
        id_number = world.application["applicant"]["id_number"]
        assert clerk.json()["applicant"]["id_number"] == id_number
        masked = operator["applicant"]
        assert masked["id_number"] != id_number and "*" in masked["id_number"]
        assert (
            masked["id_number"][:4] == id_number[:4] and masked["id_number"][-4:] == id_number[-4:]
        )
        assert "*" in masked["phone"] and "*" in masked["name"]
        worklist = (
            await client.get(
                f"{APPROVAL}/v1/worklist",
                params={"department": world.department, "status": "approved"},
                headers=client.headers_for(Role.operator),
            )
        ).json()
        for entry in worklist:
            assert "*" in entry["applicant_name"] or len(entry["applicant_name"]) == 1


async def test_reads_and_decisions_are_on_the_hash_chained_audit_trail(world: World) -> None:
    async with ActingClient(timeout=30) as client:
        admin = client.headers_for(Role.admin)
        trail = (
            await client.get(f"{INTAKE}/v1/audit", params={"case_id": world.case_id}, headers=admin)
        ).json()
        actions = {(r["action"], r["role"]) for r in trail["records"]}
        assert ("case.read", "clerk") in actions and ("case.read", "operator") in actions
        decisions = (
            await client.get(
                f"{APPROVAL}/v1/audit", params={"case_id": world.case_id}, headers=admin
            )
        ).json()
        assert [r["action"] for r in decisions["records"]].count("case.decide") == 1
        for base in (INTAKE, ROUTING, APPROVAL, DELIVERY):
            report = (await client.get(f"{base}/v1/audit/verify", headers=admin)).json()
            assert report["ok"] is True, (base, report)
