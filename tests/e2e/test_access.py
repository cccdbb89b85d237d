"""Who may see and do what, generated as a whole matrix: role x own/other scope x endpoint,
each outcome asserted against the running services (real tokens, real data). A case outside
the caller's scope reads exactly like a case that does not exist, and licence verification
tells a stranger only whether the licence is valid."""

from __future__ import annotations

import json
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
        items_where(
            catalog,
            lambda i: (
                not i.get("instant")
                and i["mode"] == "municipal"
                and bool((i.get("result") or {}).get("e_license"))
            ),
        )
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
    # Callers of the right role but another scope: the case does not exist for them (404).
    hidden: frozenset[str] = frozenset()


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
    Endpoint(
        "intake.get_case",
        get(lambda w: f"{INTAKE}/v1/cases/{w.case_id}"),
        READERS,
        hidden=frozenset({"clerk_other", "reviewer_other"}),
    ),
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
        hidden=frozenset({"clerk_other"}),
    ),  # allowed, but the case is not waiting for materials
    Endpoint(
        "intake.withdraw",
        post(lambda w: f"{INTAKE}/v1/cases/{w.case_id}/withdraw", lambda w: {}),
        {"clerk_own": {409}},
        hidden=frozenset({"clerk_other"}),
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
        hidden=frozenset({"reviewer_other"}),
    ),
    Endpoint("approval.handovers", get(lambda w: f"{APPROVAL}/v1/handovers/refused"), OVERSEERS),
    Endpoint("approval.sla_board", get(lambda w: f"{APPROVAL}/v1/sla/board"), OVERSEERS),
    Endpoint("approval.sla_cases", get(lambda w: f"{APPROVAL}/v1/sla/cases"), OVERSEERS),
    Endpoint(
        "delivery.result",
        get(lambda w: f"{DELIVERY}/v1/results/{w.case_id}"),
        READERS,
        hidden=frozenset({"clerk_other", "reviewer_other"}),
    ),
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
        expected = endpoint.allowed.get(caller, {404} if caller in endpoint.hidden else {403})
    assert answer.status_code in expected, (endpoint.name, caller, answer.text[:300])
    if answer.status_code in (401, 403, 404):
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


def missing_like(case_id: str) -> str:
    """An id of the same shape (`<city>-<date>-<10 hex>`) that no case has."""
    return case_id[:-10] + "0000000000"


def as_missing(answer: httpx.Response, case_id: str, missing: str) -> dict[str, Any]:
    """The answer's status and body, with the id it names replaced by `missing`."""
    body: dict[str, Any] = json.loads(answer.text.replace(case_id, missing))
    return {"status": answer.status_code, **body}


# Every endpoint taking a case id, with a caller of the right role but another scope.
OUT_OF_SCOPE: list[tuple[str, str, str, Callable[[World], Any]]] = [
    ("clerk_other", "GET", f"{INTAKE}/v1/cases/{{id}}", lambda w: None),
    ("reviewer_other", "GET", f"{INTAKE}/v1/cases/{{id}}", lambda w: None),
    (
        "clerk_other",
        "POST",
        f"{INTAKE}/v1/cases/{{id}}/materials",
        lambda w: {"materials": [{"code": w.application["materials"][0]["code"]}]},
    ),
    ("clerk_other", "POST", f"{INTAKE}/v1/cases/{{id}}/withdraw", lambda w: {}),
    ("reviewer_other", "GET", f"{APPROVAL}/v1/cases/{{id}}", lambda w: None),
    (
        "reviewer_other",
        "POST",
        f"{APPROVAL}/v1/cases/{{id}}/decisions",
        lambda w: {"department": w.other_department, "decision": "approve"},
    ),
    (
        "reviewer_other",
        "POST",
        f"{APPROVAL}/v1/cases/{{id}}/followup",
        lambda w: {"department": w.other_department, "answer": "已回访"},
    ),
    ("clerk_other", "GET", f"{DELIVERY}/v1/results/{{id}}", lambda w: None),
    ("reviewer_other", "GET", f"{DELIVERY}/v1/results/{{id}}", lambda w: None),
    ("clerk_other", "POST", f"{DELIVERY}/v1/cases/{{id}}/pickup", lambda w: None),
    (
        "clerk_other",
        "POST",
        f"{DELIVERY}/v1/cases/{{id}}/rating",
        lambda w: {"rating": "very_dissatisfied", "comment": "x"},
    ),
]


@pytest.mark.parametrize(
    ("caller", "method", "url", "body"),
    OUT_OF_SCOPE,
    ids=[f"{c}-{m}-{u.split('/v1/')[1]}" for c, m, u, _ in OUT_OF_SCOPE],
)
async def test_a_case_outside_the_scope_answers_like_a_missing_case(
    world: World, caller: str, method: str, url: str, body: Callable[[World], Any]
) -> None:
    missing = missing_like(world.case_id)
    async with ActingClient(timeout=30) as client:
        h = headers(client, caller, world)
        kwargs: dict[str, Any] = {"headers": h}
        if body(world) is not None:
            kwargs["json"] = body(world)
        theirs = await client.request(method, url.format(id=world.case_id), **kwargs)
        nobodys = await client.request(method, url.format(id=missing), **kwargs)
        # Nothing happened to the case: its owner still reads it as it was.
        view = await client.get(
            f"{DELIVERY}/v1/results/{world.case_id}",
            headers=client.headers_for(Role.clerk, world.office),
        )
    assert nobodys.status_code == 404, nobodys.text
    assert as_missing(theirs, world.case_id, missing) == as_missing(nobodys, missing, missing)
    assert theirs.headers["content-type"] == nobodys.headers["content-type"]
    assert view.json()["status"] == "result_issued" and view.json()["delivered_at"] is None


async def test_licence_verification_tells_a_stranger_only_the_status(world: World) -> None:
    assert world.license_id is not None, "the world's item issues an e-licence"
    url = f"{DELIVERY}/v1/licenses/{world.license_id}/verify"
    async with ActingClient(timeout=30) as client:
        owner = (await client.get(url, headers=client.headers_for(Role.clerk, world.office))).json()
        sha256 = owner["sha256"]
        assert owner["status"] == "valid" and owner["valid"] is True
        assert owner["case_id"] == world.case_id and sha256
        for caller in ("clerk_other", "reviewer_other"):
            h = headers(client, caller, world)
            plain = (await client.get(url, headers=h)).json()
            right = (await client.get(url, headers=h, params={"sha256": sha256})).json()
            wrong = (await client.get(url, headers=h, params={"sha256": "0" * 64})).json()
            unknown = (
                await client.get(
                    f"{DELIVERY}/v1/licenses/{world.license_id[:-4]}0000/verify", headers=h
                )
            ).json()
            hidden = {"case_id": None, "sha256": None, "item_code": None, "issued_at": None}
            assert plain == {
                "license_id": world.license_id,
                "status": "valid",
                "valid": True,
                **hidden,
            }
            assert right == plain
            assert wrong == {**plain, "status": "invalid", "valid": False}
            # An unknown licence reads exactly like a forged hash: only the id asked about differs.
            assert {**unknown, "license_id": world.license_id} == wrong
        for role, scope in (
            (Role.reviewer, world.department),
            (Role.operator, None),
            (Role.admin, None),
        ):
            reader = (await client.get(url, headers=client.headers_for(role, scope))).json()
            assert reader == owner, role
