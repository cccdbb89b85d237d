"""Deferral (容缺受理, DESIGN.md §7) on the real stack: a deferrable material promised at
submission lets the case go ahead; an approval waits for it (approval_held) and takes effect
when it arrives; past its due day the case ends terminated and is never delivered. Deferring a
key material is refused."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import httpx
import pytest

from contracts.registry import validate_event
from services.cli.applicants import application_for
from services.cli.devclient import APPROVAL_PORT
from services.common.settings import CommonSettings
from tests.conftest import eventually
from tests.e2e.conftest import (
    APPROVAL,
    DELIVERY,
    INTAKE,
    decide_when_listed,
    items_where,
    wait_status,
)
from tests.e2e.test_sla_processes import approval_process
from tests.kafka_helpers import CLOUDEVENTS_HEADERS, header, read_topic

pytestmark = pytest.mark.e2e

APPROVAL_HEADERS = CLOUDEVENTS_HEADERS | {"ce_handledby"}  # approval names the department


def deferrable_item(catalog: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A reviewed (not instant) item with a required material that may be deferred."""
    items = items_where(
        catalog,
        lambda i: (
            not i.get("instant")
            and int(i.get("time_limit_days") or 0) > 0
            and any(m.get("deferrable") and m.get("required", True) for m in i["materials"])
        ),
    )
    assert items, "the test catalog has a deferrable required material"
    return rng.choice(items)


def deferred_application(
    catalog: dict[str, Any], item: dict[str, Any], rng: random.Random
) -> tuple[dict[str, Any], str]:
    """Every material brought but one deferrable, promised instead; delivered electronically
    (so a delivered case closes by itself)."""
    body = application_for(catalog, item, rng, delivery="electronic")
    code = next(m["code"] for m in item["materials"] if m.get("deferrable"))
    body["materials"] = [m for m in body["materials"] if m["code"] != code] + [
        {"code": code, "deferred": True}
    ]
    return body, code


async def submit_deferred(
    http: httpx.AsyncClient, catalog: dict[str, Any], rng: random.Random
) -> tuple[str, str, str]:
    """A case with one deferred material, accepted and approved: (case id, code, department)."""
    body, code = deferred_application(catalog, deferrable_item(catalog, rng), rng)
    answer = await http.post(f"{INTAKE}/v1/cases", json=body)
    assert answer.status_code == 201, answer.text
    created = answer.json()
    # Counted as present: submitted at once, nothing missing, the deferral listed (no due yet).
    assert created["status"] == "submitted" and created["missing_materials"] == []
    assert created["deferred_materials"] == [{"code": code, "due": None, "received": False}]
    case_id = created["case_id"]
    accepted = await wait_status(http, case_id, "accepted")
    (deferred,) = accepted["deferred_materials"]
    assert deferred["code"] == code and deferred["due"] is not None and not deferred["received"]
    assert deferred["due"] > accepted["timeline"][0]["time"][:10]
    department = accepted["route"]["handled_by"]
    approve = await decide_when_listed(
        http, case_id, department, {"decision": "approve", "reason": "符合条件"}
    )
    assert approve.status_code == 200, approve.text
    held = await wait_status(
        http, case_id, "approval_held", with_events=["gov.case.approval_held.v1"]
    )
    assert "gov.case.approved.v1" not in {e["type"] for e in held["timeline"]}
    held_at_approval = (await http.get(f"{APPROVAL}/v1/cases/{case_id}")).json()
    assert held_at_approval["status"] == "approval_held"
    assert held_at_approval["deferred_outstanding"] == [code]
    assert held_at_approval["deferred_due"] == deferred["due"]
    # Decided: neither withdrawn nor decided again.
    withdraw = await http.post(f"{INTAKE}/v1/cases/{case_id}/withdraw", json={})
    assert withdraw.status_code == 409 and withdraw.json()["code"] == "invalid_state"
    return case_id, code, department


async def approval_events(
    settings: CommonSettings, case_id: str, event_type: str
) -> list[dict[str, Any]]:
    """The case's `event_type` records on case.approval.v1, each checked against the contract:
    full CloudEvents headers (with the deciding department), keyed by case, schema-valid."""
    found = []
    for record in await read_topic(settings, "case.approval.v1", idle=1.0):
        if header(record, "ce_subject") != case_id or header(record, "ce_type") != event_type:
            continue
        assert APPROVAL_HEADERS <= {k for k, _ in record.headers}, record.headers
        assert header(record, "ce_specversion") == "1.0"
        assert header(record, "ce_source")
        assert record.key is not None and record.key.decode() == case_id
        data = json.loads(record.value or b"null")
        validate_event(event_type, data)
        found.append({"data": data, "handledby": header(record, "ce_handledby")})
    return found


async def test_a_deferred_material_brought_in_time_releases_the_held_approval(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
    settings: CommonSettings,
) -> None:
    case_id, code, department = await submit_deferred(http, catalog, rng)

    # Only what is owed is taken: another material is not waited for.
    other = await http.post(
        f"{INTAKE}/v1/cases/{case_id}/materials", json={"materials": [{"code": "NOT-OWED"}]}
    )
    assert other.status_code == 422 and other.json()["code"] == "unknown_material"
    brought = await http.post(
        f"{INTAKE}/v1/cases/{case_id}/materials",
        json={"materials": [{"code": code, "sha256": hashlib.sha256(b"late").hexdigest()}]},
    )
    assert brought.status_code == 200, brought.text
    assert brought.json()["deferred_materials"][0]["received"] is True
    # Nothing is outstanding any more: a second time is refused.
    again = await http.post(
        f"{INTAKE}/v1/cases/{case_id}/materials", json={"materials": [{"code": code}]}
    )
    assert again.status_code == 409 and again.json()["code"] == "invalid_state"

    closed = await wait_status(
        http,
        case_id,
        "closed",
        with_events=[
            "gov.case.approval_held.v1",
            "gov.case.supplemented.v1",
            "gov.case.approved.v1",
            "gov.case.delivered.v1",
        ],
    )
    (deferred,) = closed["deferred_materials"]
    assert deferred["received"] is True
    types = [e["type"] for e in closed["timeline"]]
    assert types.index("gov.case.approval_held.v1") < types.index("gov.case.approved.v1")

    (held,) = await approval_events(settings, case_id, "gov.case.approval_held.v1")
    assert held["handledby"] == department
    assert held["data"]["outstanding"] == [code] and held["data"]["department"] == department
    (approved,) = await approval_events(settings, case_id, "gov.case.approved.v1")
    assert approved["data"]["decided_at"] == held["data"]["decided_at"]  # as decided
    result = await http.get(f"{DELIVERY}/v1/results/{case_id}")
    assert result.status_code == 200, result.text


async def test_a_deferred_material_past_its_due_day_terminates_the_case(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
    settings: CommonSettings,
) -> None:
    case_id, code, department = await submit_deferred(http, catalog, rng)

    # An approval process whose clock runs 60 days ahead: the due day is long over there.
    ahead = approval_process(APPROVAL_PORT + 30)
    try:
        ended = await wait_status(
            http, case_id, "terminated", timeout=90, with_events=["gov.case.terminated.v1"]
        )
    finally:
        ahead.terminate()
        ahead.wait(timeout=30)
    (deferred,) = ended["deferred_materials"]
    assert deferred["received"] is False

    (terminated,) = await approval_events(settings, case_id, "gov.case.terminated.v1")
    assert terminated["handledby"] == department
    assert terminated["data"]["reason"] == "deferred_materials_lapsed"
    assert terminated["data"]["outstanding"] == [code]
    assert await approval_events(settings, case_id, "gov.case.approved.v1") == []

    late = await http.post(
        f"{INTAKE}/v1/cases/{case_id}/materials", json={"materials": [{"code": code}]}
    )
    assert late.status_code == 409 and late.json()["code"] == "invalid_state"

    async def never_delivered() -> bool:
        view = (await http.get(f"{INTAKE}/v1/cases/{case_id}")).json()
        types = {e["type"] for e in view["timeline"]}
        return view["status"] == "terminated" and not types & {
            "gov.case.approved.v1",
            "gov.case.result_issued.v1",
            "gov.case.delivered.v1",
        }

    await eventually(never_delivered, what=f"{case_id} terminated and never delivered")
    assert (await http.get(f"{DELIVERY}/v1/results/{case_id}")).status_code == 404


async def test_a_key_material_cannot_be_deferred(
    catalog: dict[str, Any], http: httpx.AsyncClient, rng: random.Random
) -> None:
    item = deferrable_item(catalog, rng)
    body = application_for(catalog, item, rng)
    index, key = next(
        (i, m)
        for i, m in enumerate(body["materials"])
        if not any(s["code"] == m["code"] and s.get("deferrable") for s in item["materials"])
    )
    body["materials"][index] = {"code": key["code"], "deferred": True}
    answer = await http.post(f"{INTAKE}/v1/cases", json=body)
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert problem["code"] == "deferral_not_allowed"
    assert any(e["field"] == f"materials[{index}].deferred" for e in problem["errors"])


async def test_the_one_time_notification_lists_the_deferred_material_too(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
    settings: CommonSettings,
) -> None:
    item = deferrable_item(catalog, rng)
    body, code = deferred_application(catalog, item, rng)
    missing = next(
        m["code"] for m in item["materials"] if m.get("required", True) and m["code"] != code
    )
    body["materials"] = [m for m in body["materials"] if m["code"] != missing]
    answer = await http.post(f"{INTAKE}/v1/cases", json=body)
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert created["status"] == "awaiting_supplement"
    assert created["missing_materials"] == [missing]
    assert [m["code"] for m in created["deferred_materials"]] == [code]
    case_id = created["case_id"]

    async def notified() -> dict[str, Any] | None:
        for record in await read_topic(settings, "case.intake.v1", idle=0.5):
            if header(record, "ce_subject") == case_id:
                data: dict[str, Any] = json.loads(record.value or b"null")
                validate_event(header(record, "ce_type") or "", data)
                return data
        return None

    notice = await eventually(notified, what=f"{case_id}'s one-time notification")
    assert notice["missing_materials"] == [missing] and notice["deferred_materials"] == [code]

    # The missing one completes the case; the deferred one is still owed, due once accepted.
    completed = await http.post(
        f"{INTAKE}/v1/cases/{case_id}/materials", json={"materials": [{"code": missing}]}
    )
    assert completed.status_code == 200, completed.text
    assert completed.json()["status"] == "submitted"
    accepted = await wait_status(http, case_id, "accepted")
    (deferred,) = accepted["deferred_materials"]
    assert deferred["code"] == code and deferred["due"] and not deferred["received"]


async def test_a_held_case_is_at_risk_by_its_deferral_due_day_until_the_material_comes(
    catalog: dict[str, Any], http: httpx.AsyncClient, rng: random.Random
) -> None:
    case_id, code, department = await submit_deferred(http, catalog, rng)
    due = (await http.get(f"{APPROVAL}/v1/cases/{case_id}")).json()["deferred_due"]

    async def at_risk(within_days: int) -> dict[str, dict[str, Any]]:
        answer = await http.get(
            f"{APPROVAL}/v1/sla/cases",
            params={"department": department, "within_days": within_days},
        )
        assert answer.status_code == 200, answer.text
        return {row["case_id"]: row for row in answer.json()}

    # Decided, so its legal deadline is no risk any more; its due day is, once near.
    row = (await at_risk(365))[case_id]
    assert row["status"] == "approval_held"
    assert row["deferred_outstanding"] == [code] and row["deferred_due"] == due
    assert case_id not in await at_risk(0)  # the due day is after today
    brought = await http.post(
        f"{INTAKE}/v1/cases/{case_id}/materials",
        json={"materials": [{"code": code, "sha256": hashlib.sha256(b"late").hexdigest()}]},
    )
    assert brought.status_code == 200, brought.text
    await wait_status(http, case_id, "closed")
    assert case_id not in await at_risk(365)
