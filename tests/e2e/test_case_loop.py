"""The case loop end to end: counter submission to delivered, closed result."""

from __future__ import annotations

import asyncio
import random
from datetime import date
from typing import Any

import httpx
import pytest

from services.cli.applicants import application_for
from tests.conftest import eventually
from tests.e2e.conftest import (
    APPROVAL,
    APPROVED_CASE_EVENTS,
    DELIVERY,
    INTAKE,
    ROUTING,
    case_status,
    decide_when_listed,
    items_where,
    wait_status,
)

pytestmark = pytest.mark.e2e

PATH_OF_MODE = {
    "online": "online",
    "delegated": "delegated",
    "entrusted": "entrusted",
    "municipal": "municipal",
}


async def submit(
    http: httpx.AsyncClient, body: dict[str, Any], key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return await http.post(f"{INTAKE}/v1/cases", json=body, headers=headers)


async def close_case(http: httpx.AsyncClient, case_id: str, instant: bool) -> dict[str, Any]:
    routed = await wait_status(
        http,
        case_id,
        *("routed", "accepted", "approved", "result_issued", "delivered", "closed"),
        with_events=["gov.case.routed.v1"],
    )
    route = routed["route"]
    assert route is not None
    if not instant:
        answer = await decide_when_listed(
            http, case_id, route["handled_by"], {"decision": "approve", "reason": "材料齐全"}
        )
        assert answer.status_code == 200, answer.text
    view = await wait_status(http, case_id, "result_issued", "closed")
    if view["status"] == "result_issued":  # counter pickup waits for the applicant
        pickup = await http.post(f"{DELIVERY}/v1/cases/{case_id}/pickup", json={})
        assert pickup.status_code == 200, pickup.text
        view = await wait_status(http, case_id, "closed")
    return view


@pytest.mark.parametrize(
    ("mode", "delegated_to"),
    [
        ("online", None),
        ("delegated", "district"),
        ("delegated", "street"),
        ("entrusted", None),
        ("municipal", None),
    ],
)
async def test_one_case_per_path_closes_with_the_right_route(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
    mode: str,
    delegated_to: str | None,
) -> None:
    candidates = items_where(
        catalog,
        lambda i: (
            i["mode"] == mode and (delegated_to is None or i.get("delegated_to") == delegated_to)
        ),
    )
    assert candidates, f"the demo catalog has no {mode}/{delegated_to} item"
    item = rng.choice(candidates)
    body = application_for(catalog, item, rng, channel="counter", delivery="electronic")
    answer = await submit(http, body)
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert created["status"] == "submitted" and created["missing_materials"] == []

    view = await close_case(http, created["case_id"], bool(item.get("instant")))
    route = view["route"]
    assert route["path"] == PATH_OF_MODE[mode]
    expected_level = delegated_to if mode == "delegated" else "municipal"
    assert route["level"] == expected_level
    if mode in ("online", "entrusted", "municipal"):
        assert route["handled_by"] == item["owner"]
    else:
        department = next(d for d in catalog["departments"] if d["code"] == route["handled_by"])
        owner = next(d for d in catalog["departments"] if d["code"] == item["owner"])
        assert department["line"] == owner["line"] and department["level"] == delegated_to
    assert route["catalog_version"] >= 1 and route["rule"] and route["explanation"]
    view = await wait_status(http, created["case_id"], "closed", with_events=APPROVED_CASE_EVENTS)
    types = [e["type"] for e in view["timeline"]]
    for expected in APPROVED_CASE_EVENTS:
        assert expected in types, (expected, types)
    assert view["deadline"] is not None or item["time_limit_days"] == 0
    result = (await http.get(f"{DELIVERY}/v1/results/{created['case_id']}")).json()
    if item["result"].get("e_license"):
        verified = await http.get(
            f"{DELIVERY}/v1/licenses/{result['result']['license_id']}/verify",
            params={"sha256": result["result"]["sha256"]},
        )
        assert verified.json()["valid"] is True


async def test_missing_materials_wait_for_a_supplement_then_close(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
) -> None:
    item = rng.choice(
        items_where(
            catalog, lambda i: sum(1 for m in i["materials"] if m.get("required", True)) >= 2
        )
    )
    body = application_for(catalog, item, rng, channel="counter", delivery="postal", complete=False)
    answer = await submit(http, body)
    assert answer.status_code == 201, answer.text
    created = answer.json()
    required = sorted(m["code"] for m in item["materials"] if m.get("required", True))
    assert created["status"] == "awaiting_supplement"
    assert sorted(created["missing_materials"]) == required  # all listed at once

    async def notified() -> bool:
        view = await case_status(http, created["case_id"])
        return [e["type"] for e in view["timeline"]] == ["gov.case.notified.v1"]

    await eventually(notified, what="the one-time notification on the timeline")

    supplement = await http.post(
        f"{INTAKE}/v1/cases/{created['case_id']}/materials",
        json={"materials": [{"code": c} for c in required]},
    )
    assert supplement.status_code == 200, supplement.text
    assert supplement.json()["status"] == "submitted"
    view = await close_case(http, created["case_id"], bool(item.get("instant")))
    types = [e["type"] for e in view["timeline"]]
    assert (
        types.index("gov.case.notified.v1")
        < types.index("gov.case.supplemented.v1")
        < types.index("gov.case.submitted.v1")
        < types.index("gov.case.closed.v1")
    )
    result = (await http.get(f"{DELIVERY}/v1/results/{created['case_id']}")).json()
    assert result["tracking_number"]


async def test_intake_refuses_what_it_can_see(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
) -> None:
    item = rng.choice(
        items_where(
            catalog,
            lambda i: (
                i["mode"] in ("delegated", "entrusted")
                and "street" not in (i.get("intake_levels") or [])
                and i["category"] == "enterprise"
            ),
        )
    )
    body = application_for(catalog, item, rng, channel="counter")
    street_office = next(o["code"] for o in catalog["offices"] if o["kind"] == "street_center")
    wrong_office = await submit(http, {**body, "office_code": street_office})
    assert wrong_office.status_code == 422
    problem = wrong_office.json()
    assert wrong_office.headers["content-type"].startswith("application/problem+json")
    assert problem["code"] == "office_not_allowed"
    assert "guidance" in problem and problem["guidance"]

    unknown = await submit(http, {**body, "item_code": "NO-SUCH-ITEM"})
    assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_item"

    bad_id = dict(body["applicant"])
    bad_id["id_number"] = bad_id["id_number"][:-1] + (
        "0" if bad_id["id_number"][-1] != "0" else "1"
    )
    invalid = await submit(http, {**body, "applicant": bad_id})
    assert invalid.status_code == 422 and invalid.json()["code"] == "invalid_id_number"

    no_office = await submit(http, {**body, "office_code": "NOWHERE"})
    assert no_office.status_code == 422 and no_office.json()["code"] == "unknown_office"

    today = date.today().isoformat()
    future = [i for i in catalog["items"] if str(i.get("effective_from") or "") > today]
    assert future, "the demo catalog has an item that is not in force yet"
    early = application_for(catalog, future[0], rng, channel="counter")
    refused = await submit(http, early)
    assert refused.status_code == 422 and refused.json()["code"] == "item_not_effective"


async def test_same_idempotency_key_returns_the_same_case(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
) -> None:
    item = rng.choice(items_where(catalog, lambda i: True))
    body = application_for(catalog, item, rng)
    key = f"counter-7-{rng.random()}"
    first, second = await submit(http, body, key), await submit(http, body, key)
    assert first.status_code == 201 and second.status_code == 201
    assert first.json()["case_id"] == second.json()["case_id"]
    other = dict(body, delivery={"method": "electronic", "address": None})
    if other == body:
        other["applicant"] = dict(body["applicant"], phone="13900000000")
    conflict = await submit(http, other, key)
    assert conflict.status_code == 409 and conflict.json()["code"] == "idempotency_key_reused"


async def test_racing_retries_with_one_key_make_one_case(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
) -> None:
    """A terminal that times out and retries at once sends the same key twice in flight:
    the key's own insert decides, the losers roll back and answer with the winner's case."""
    item = rng.choice(items_where(catalog, lambda i: True))
    body = application_for(catalog, item, rng)
    key = f"counter-9-{rng.random()}"
    answers = await asyncio.gather(*(submit(http, body, key) for _ in range(6)))
    assert [a.status_code for a in answers] == [201] * 6, [a.text for a in answers]
    assert len({a.json()["case_id"] for a in answers}) == 1


async def test_wrong_department_and_wrong_state_are_refused(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
) -> None:
    item = rng.choice(
        items_where(catalog, lambda i: not i.get("instant") and i["mode"] == "municipal")
    )
    created = (
        await submit(http, application_for(catalog, item, rng, delivery="electronic"))
    ).json()
    view = await wait_status(http, created["case_id"], "accepted")
    department = view["route"]["handled_by"]
    other = next(d["code"] for d in catalog["departments"] if d["code"] != department)
    wrong = await http.post(
        f"{APPROVAL}/v1/cases/{created['case_id']}/decisions",
        json={"department": other, "decision": "approve"},
    )
    # Another department's reviewer is told what a missing case would tell: nothing.
    assert wrong.status_code == 404 and wrong.json()["code"] == "case_not_found", wrong.text
    no_basis = await http.post(
        f"{APPROVAL}/v1/cases/{created['case_id']}/decisions",
        json={"department": department, "decision": "deny", "reason": "不符合条件"},
    )
    assert no_basis.status_code == 422, no_basis.text
    denied = await http.post(
        f"{APPROVAL}/v1/cases/{created['case_id']}/decisions",
        json={
            "department": department,
            "decision": "deny",
            "reason": "不符合条件",
            "legal_basis": "《行政许可法》第三十八条",
        },
    )
    assert denied.status_code == 200, denied.text
    again = await http.post(
        f"{APPROVAL}/v1/cases/{created['case_id']}/decisions",
        json={"department": department, "decision": "approve"},
    )
    assert again.status_code == 409, again.text
    view = await wait_status(http, created["case_id"], "closed", with_events=["gov.case.denied.v1"])
    result = (await http.get(f"{DELIVERY}/v1/results/{created['case_id']}")).json()
    assert result["outcome"] == "denied" and result["result"]["kind"] == "decision_letter"
    assert "gov.case.denied.v1" in [e["type"] for e in view["timeline"]]


async def test_routing_preview_is_in_the_answer(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
) -> None:
    item = rng.choice(items_where(catalog, lambda i: i["mode"] == "delegated"))
    answer = await submit(http, application_for(catalog, item, rng))
    preview = answer.json()["route_preview"]
    assert preview is not None and preview["path"] == "delegated"
    view = await wait_status(
        http, answer.json()["case_id"], "accepted", "approved", "closed", "result_issued"
    )
    assert view["route"]["handled_by"] == preview["handled_by"]
    triage = await http.get(f"{ROUTING}/v1/triage")
    assert triage.status_code == 200
