"""Bundles at intake end to end (一件事一次办, DESIGN.md §8), on the real stack with the four
services as processes: the one form (`GET /v1/bundles`), members created by the answers and
routed each to its own level and department, a dependent member `waiting` and then submitted
with its prerequisite's e-licence, a denied prerequisite ending its dependent, the withdrawal
of a bundle, idempotent resubmission, every refusal, and a member failing routing into triage
while the others go on, then retried.

The module loads the demo catalog again with bundles of its own (a new catalog version), built
from the catalog's items picked by their properties and from copies of them with e-licence
types of this module; it loads the demo catalog back at the end.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from contracts.events import ROUTING_TOPIC
from services.cli.applicants import company_name, credit_code, phone
from services.cli.devclient import ActingClient
from services.common.auth import Role
from services.common.settings import CommonSettings
from tests.conftest import eventually
from tests.e2e.conftest import (
    APPROVAL,
    INTAKE,
    ROUTING,
    decide_when_listed,
    items_where,
    wait_status,
)
from tests.kafka_helpers import header, read_topic

pytestmark = pytest.mark.e2e

LICENCE = "E2E-BUNDLE-LICENCE"  # the e-licence type the issuing members' results are
ISSUE, ISSUE_SLOW, TAKE, ORPHAN = (
    "E2E-BND-ISSUE",
    "E2E-BND-ISSUE-SLOW",
    "E2E-BND-TAKE",
    "E2E-BND-ORPHAN",
)
ORPHAN_OWNER, ORPHAN_LINE = "E2E-BND-M-ORPHAN", "e2e-bundle-orphan"
PARALLEL, CHAIN, DENY, TRIAGE, LATER = (
    "E2E-B-PARALLEL",
    "E2E-B-CHAIN",
    "E2E-B-DENY",
    "E2E-B-TRIAGE",
    "E2E-B-LATER",
)
DECIDED_OR_ON = ("routed", "accepted", "approved", "result_issued", "delivered", "closed")


def _pick(catalog: dict[str, Any], what: str, predicate: Any) -> dict[str, Any]:
    found = items_where(catalog, predicate)
    assert found, f"the catalog has no {what}"
    return found[0]


def parallel_members(catalog: dict[str, Any]) -> list[dict[str, Any]]:
    """Three enterprise items decided by three departments at two levels: an online one (its
    municipal owner), one delegated to the district (a district unit) and one the municipal
    owner of another line decides (municipal or entrusted)."""
    online = _pick(
        catalog,
        "enterprise online item",
        lambda i: i["category"] == "enterprise" and i["mode"] == "online",
    )
    delegated = _pick(
        catalog,
        "enterprise item delegated to the district",
        lambda i: (
            i["category"] == "enterprise"
            and i["mode"] == "delegated"
            and i.get("delegated_to") == "district"
        ),
    )
    other = _pick(
        catalog,
        "enterprise item another municipal department decides",
        lambda i: (
            i["category"] == "enterprise"
            and i["mode"] in ("municipal", "entrusted")
            and i["owner"] not in (online["owner"], delegated["owner"])
        ),
    )
    return [online, delegated, other]


def bundle_catalog(catalog: dict[str, Any]) -> dict[str, Any]:
    """The catalog with this module's items, a department-less line and its bundles."""
    raw = copy.deepcopy(catalog)
    online, delegated, other = parallel_members(catalog)
    instant_online = _pick(
        catalog,
        "instant enterprise online item",
        lambda i: i["category"] == "enterprise" and i["mode"] == "online" and i.get("instant"),
    )

    def item(template: dict[str, Any], code: str, **fields: Any) -> dict[str, Any]:
        body = {**copy.deepcopy(template), "code": code, "name": f"{code} (e2e)", **fields}
        body.pop("effective_from", None)
        body.pop("effective_to", None)
        return body

    issued = {"kind": "licence", "e_license": True, "license_type": LICENCE}
    raw["items"] += [
        item(instant_online, ISSUE, result=issued),
        item(instant_online, ISSUE_SLOW, result=issued, instant=False, time_limit_days=5),
        item(
            delegated,
            TAKE,
            materials=[
                {"code": "E2E-FORM", "name": "申请表", "required": True},
                {"code": "E2E-LIC", "name": "许可证", "required": True, "license_type": LICENCE},
            ],
        ),
        item(delegated, ORPHAN, owner=ORPHAN_OWNER),
    ]
    raw["departments"].append(
        {
            "code": ORPHAN_OWNER,
            "name": "无下级承办部门的市级部门 (e2e)",
            "line": ORPHAN_LINE,
            "level": "municipal",
            "division": raw["city"]["code"],
        }
    )
    lead = online["owner"]

    def bundle(code: str, members: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        return {
            "code": code,
            "name": f"{code} (e2e)",
            "category": "enterprise",
            "lead": lead,
            "time_limit_days": 20,
            "members": members,
            **fields,
        }

    raw["bundles"] = [
        *raw.get("bundles", []),
        bundle(PARALLEL, [{"item": i["code"]} for i in (online, delegated, other)]),
        bundle(
            CHAIN,
            [
                {"item": ISSUE},
                {"item": TAKE, "after": [ISSUE]},
                {"item": other["code"], "when": {"extra": True}},
            ],
            questions=[{"code": "extra", "text": "是否另办", "type": "boolean"}],
        ),
        bundle(DENY, [{"item": ISSUE_SLOW}, {"item": TAKE, "after": [ISSUE_SLOW]}]),
        bundle(TRIAGE, [{"item": instant_online["code"]}, {"item": ORPHAN}]),
        bundle(LATER, [{"item": ISSUE}], effective_from="2099-01-01"),
    ]
    return raw


async def load(http: ActingClient, raw: dict[str, Any]) -> None:
    answer = await http.post(f"{ROUTING}/v1/catalog", json=raw)
    assert answer.status_code == 201, answer.text
    offered = {b["code"] for b in raw.get("bundles", []) if not b.get("effective_from")}
    items = {i["code"] for i in raw["items"]}

    async def intake_has_it() -> bool:
        listed = await http.get(f"{INTAKE}/v1/items")
        bundles = await http.get(f"{INTAKE}/v1/bundles")
        return (
            listed.status_code == 200
            and {i["code"] for i in listed.json()} == items
            and bundles.status_code == 200
            and {b["code"] for b in bundles.json()} >= offered
        )

    await eventually(intake_has_it, what="intake follows the catalog")


@pytest.fixture(scope="module")
async def raw(catalog: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    with_bundles = bundle_catalog(catalog)
    async with ActingClient(timeout=30) as client:
        await load(client, with_bundles)
        try:
            yield with_bundles
        finally:
            await load(client, catalog)


@pytest.fixture
def rng() -> random.Random:
    """New applicants on every run: the stack keeps its licences from one run to the next."""
    return random.Random(uuid.uuid4().int)


def item_of(raw: dict[str, Any], code: str) -> dict[str, Any]:
    return next(i for i in raw["items"] if i["code"] == code)


def bundle_of(raw: dict[str, Any], code: str) -> dict[str, Any]:
    return next(b for b in raw["bundles"] if b["code"] == code)


def where_decided(raw: dict[str, Any], line_of: str) -> tuple[str, str]:
    """(district, street) of a district that has a district unit of `line_of`'s owner line."""
    owner = next(d for d in raw["departments"] if d["code"] == item_of(raw, line_of)["owner"])
    districts = {
        d["division"]
        for d in raw["departments"]
        if d["line"] == owner["line"] and d["level"] == "district"
    }
    district = next(d for d in raw["districts"] if d["code"] in districts and d.get("streets"))
    return district["code"], district["streets"][0]["code"]


def district_office(raw: dict[str, Any], district: str) -> str:
    return str(
        next(
            o["code"]
            for o in raw["offices"]
            if o["kind"] == "district_center" and o["division"] == district
        )
    )


def application(
    raw: dict[str, Any],
    code: str,
    rng: random.Random,
    *,
    answers: dict[str, Any] | None = None,
    leave_out: tuple[str, ...] = (),
    district_of: str | None = None,
) -> dict[str, Any]:
    """A counter application of bundle `code` at a district center, every material of every
    member given once (but `leave_out`), by a new company of a district where a delegated
    member (`district_of`, an item code) has its district unit."""
    bundle = bundle_of(raw, code)
    delegated = district_of or next(
        (
            m["item"]
            for m in bundle["members"]
            if item_of(raw, m["item"])["mode"] == "delegated"
            and item_of(raw, m["item"])["owner"] != ORPHAN_OWNER
        ),
        None,
    )
    if delegated is not None:
        district, street = where_decided(raw, delegated)
    else:
        district = raw["districts"][0]["code"]
        street = raw["districts"][0]["streets"][0]["code"]
    codes = dict.fromkeys(
        spec["code"]
        for m in bundle["members"]
        for spec in item_of(raw, m["item"]).get("materials", [])
        if spec.get("required", True) and spec.get("license_type") != LICENCE
    )
    return {
        "bundle_code": code,
        "channel": "counter",
        "office_code": district_office(raw, district),
        "applicant": {
            "category": "enterprise",
            "name": company_name(rng, raw["city"]["name"]),
            "id_number": credit_code(rng),
            "phone": phone(rng),
            "division_code": street,
        },
        "answers": answers or {},
        "materials": [
            {"code": c, "sha256": hashlib.sha256(f"{c}{rng.random()}".encode()).hexdigest()}
            for c in codes
            if c not in leave_out
        ],
        "delivery": {"method": "electronic"},
    }


def clerk(http: ActingClient, body: dict[str, Any]) -> dict[str, str]:
    return http.headers_for(Role.clerk, body["office_code"] or "online")


async def submit(
    http: ActingClient, body: dict[str, Any], *, key: str | None = None
) -> dict[str, Any]:
    headers = clerk(http, body) | ({"Idempotency-Key": key} if key else {})
    answer = await http.post(f"{INTAKE}/v1/bundles", json=body, headers=headers)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


async def bundle_view(http: ActingClient, bundle_id: str) -> dict[str, Any]:
    answer = await http.get(f"{INTAKE}/v1/bundles/{bundle_id}")
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


async def member_reaches(
    http: ActingClient, bundle_id: str, item_code: str, *statuses: str, timeout: float = 60
) -> dict[str, Any]:
    """The bundle's view once its member of `item_code` is in one of `statuses`."""

    async def reached() -> dict[str, Any] | None:
        view = await bundle_view(http, bundle_id)
        member = next(m for m in view["members"] if m["item_code"] == item_code)
        return view if member["status"] in statuses else None

    view: dict[str, Any] = await eventually(
        reached, timeout=timeout, what=f"{item_code} of {bundle_id} to reach {statuses}"
    )
    return view


def routing_outcome(data: dict[str, Any]) -> str:
    """routed or route_failed, told by the event's own fields."""
    return "routed" if data.get("route") else "route_failed"


def member(view: dict[str, Any], item_code: str) -> dict[str, Any]:
    return next(m for m in view["members"] if m["item_code"] == item_code)


# --------------------------------------------------------------------------- the one form


async def test_the_bundles_are_listed_with_their_questions_and_the_union_of_materials(
    raw: dict[str, Any], http: ActingClient
) -> None:
    answer = await http.get(f"{INTAKE}/v1/bundles")
    assert answer.status_code == 200, answer.text
    listed = {b["code"]: b for b in answer.json()}
    assert LATER not in listed  # not in force yet
    chain = listed[CHAIN]
    assert [q["code"] for q in chain["questions"]] == ["extra"]
    assert [(m["item"], m["after"]) for m in chain["members"]][:2] == [
        (ISSUE, []),
        (TAKE, [ISSUE]),
    ]
    materials = {m["code"]: m for m in chain["materials"]}
    every = {
        spec["code"] for m in chain["members"] for spec in item_of(raw, m["item"])["materials"]
    }
    assert set(materials) == every
    assert materials["E2E-LIC"]["license_type"] == LICENCE
    assert materials["E2E-LIC"]["items"] == [TAKE]
    assert chain["intake_levels"] == ["district"]


# --------------------------------------------------------------------------- parallel members


async def test_members_are_routed_each_to_its_own_department_and_level(
    raw: dict[str, Any], http: ActingClient, rng: random.Random
) -> None:
    body = application(raw, PARALLEL, rng)
    created = await submit(http, body)
    assert created["status"] == "in_progress" and created["missing_materials"] == []
    assert [m["status"] for m in created["members"]] == ["submitted"] * 3
    assert all(m["route_preview"] for m in created["members"])
    bundle_id = created["bundle_id"]
    for m in created["members"]:
        await member_reaches(http, bundle_id, m["item_code"], *DECIDED_OR_ON)
    view = await bundle_view(http, bundle_id)
    routes = [m["route"] for m in view["members"]]
    assert len({r["handled_by"] for r in routes}) == 3
    assert {r["level"] for r in routes} == {"municipal", "district"}
    for m in view["members"]:  # the route intake previewed is the route routing gave
        preview = next(p for p in created["members"] if p["case_id"] == m["case_id"])
        assert preview["route_preview"]["handled_by"] == m["route"]["handled_by"]
    # Every member is an ordinary case naming its bundle; one timeline holds them all.
    case = await http.get(f"{INTAKE}/v1/cases/{view['members'][0]['case_id']}")
    assert case.json()["bundle_id"] == bundle_id
    timeline = view["timeline"]
    assert timeline[0]["type"] in ("gov.case.submitted.v1", "gov.bundle.submitted.v1")
    assert {e["case_id"] for e in timeline} == {None} | {m["case_id"] for m in view["members"]}
    assert [e["time"] for e in timeline] == sorted(e["time"] for e in timeline)

    # The bundle's deadline runs from its first member's acceptance.
    async def deadline_set() -> dict[str, Any] | None:
        view = await bundle_view(http, bundle_id)
        return view if view["deadline"] else None

    view = await eventually(deadline_set, what=f"{bundle_id}'s deadline")
    accepted = min(e["time"][:10] for e in view["timeline"] if e["type"] == "gov.case.accepted.v1")
    assert view["deadline"] > accepted


# --------------------------------------------------------------------------- the answers


async def test_a_conditional_member_is_created_or_not_by_the_answers(
    raw: dict[str, Any], http: ActingClient, rng: random.Random
) -> None:
    conditional = bundle_of(raw, CHAIN)["members"][2]["item"]
    without = await submit(http, application(raw, CHAIN, rng, answers={"extra": False}))
    assert [m["item_code"] for m in without["members"]] == [ISSUE, TAKE]
    assert without["excluded"] == [conditional]
    with_it = await submit(http, application(raw, CHAIN, rng, answers={"extra": True}))
    assert [m["item_code"] for m in with_it["members"]] == [ISSUE, TAKE, conditional]
    assert with_it["excluded"] == []


# --------------------------------------------------------------------------- dependents


async def test_a_dependent_waits_then_goes_with_its_prerequisites_licence(
    raw: dict[str, Any], http: ActingClient, rng: random.Random
) -> None:
    body = application(raw, CHAIN, rng, answers={"extra": False})
    created = await submit(http, body)
    statuses = {m["item_code"]: m["status"] for m in created["members"]}
    assert statuses == {ISSUE: "submitted", TAKE: "waiting"}
    # The licence the prerequisite will issue is not asked for.
    assert "E2E-LIC" not in created["missing_materials"]
    bundle_id = created["bundle_id"]
    view = await member_reaches(http, bundle_id, TAKE, *DECIDED_OR_ON, "submitted", timeout=90)
    take, issue = member(view, TAKE), member(view, ISSUE)
    assert take["after"] == [issue["case_id"]]
    assert issue["status"] in ("approved", "result_issued", "delivered", "closed")
    case = await wait_status(
        http, take["case_id"], "submitted", *DECIDED_OR_ON, with_events=["gov.case.submitted.v1"]
    )
    submitted = [e for e in case["timeline"] if e["type"] == "gov.case.submitted.v1"]
    assert len(submitted) == 1
    assert submitted[0]["note"] and "E2E-LIC ←" in submitted[0]["note"], submitted
    # The licence attached is the one the prerequisite issued.
    library = await http.get(
        f"{INTAKE}/v1/licenses", params={"holder": body["applicant"]["id_number"]}
    )
    issued = [lic for lic in library.json() if lic["license_type"] == LICENCE]
    assert len(issued) == 1
    assert submitted[0]["note"].endswith(issued[0]["license_id"])


async def test_a_denied_prerequisite_ends_its_dependent(
    raw: dict[str, Any], http: ActingClient, rng: random.Random
) -> None:
    created = await submit(http, application(raw, DENY, rng))
    bundle_id = created["bundle_id"]
    view = await member_reaches(http, bundle_id, ISSUE_SLOW, "routed", "accepted")
    slow = member(view, ISSUE_SLOW)
    denied = await decide_when_listed(
        http,
        slow["case_id"],
        slow["route"]["handled_by"],
        {"decision": "deny", "reason": "不符合条件", "legal_basis": "《行政许可法》第三十八条"},
    )
    assert denied.status_code == 200, denied.text
    view = await member_reaches(http, bundle_id, TAKE, "withdrawn")
    take = member(view, TAKE)

    # The status is intake's own write; the timeline entry follows through the outbox and
    # the timeline consumer: wait for it, then there must be exactly one.
    async def ended() -> list[dict[str, Any]] | None:
        found = await bundle_view(http, bundle_id)
        entries = [
            e
            for e in found["timeline"]
            if e["case_id"] == take["case_id"] and e["type"] == "gov.case.withdrawn.v1"
        ]
        return entries or None

    endings = await eventually(
        ended, timeout=60, what=f"{take['case_id']} withdrawn in the timeline"
    )
    assert len(endings) == 1 and endings[0]["note"] == "reason: prerequisite_ended", endings

    # The denial's letter still goes out: with its dependent ended, every member has its
    # result or has ended, so the bundle is delivered (electronically) and closes. The bundle's
    # status (bundle topic) and its member's (case topic, the timeline) come by different
    # consumers: wait for both, as a counter would see them once settled.
    async def closed() -> dict[str, Any] | None:
        found = await bundle_view(http, bundle_id)
        settled = found["status"] == "closed" and member(found, ISSUE_SLOW)["status"] == "closed"
        return found if settled else None

    view = await eventually(closed, timeout=60, what=f"{bundle_id} to close")
    types = [e["type"] for e in view["timeline"] if e["case_id"] is None]
    assert types.count("gov.bundle.delivered.v1") == 1, types
    assert member(view, ISSUE_SLOW)["status"] == "closed"
    assert member(view, TAKE)["status"] == "withdrawn"


# --------------------------------------------------------------------------- the bundle


async def test_withdrawing_a_bundle_withdraws_every_undecided_member(
    raw: dict[str, Any], http: ActingClient, rng: random.Random
) -> None:
    body = application(raw, DENY, rng)
    created = await submit(http, body)
    bundle_id = created["bundle_id"]
    await member_reaches(http, bundle_id, ISSUE_SLOW, "routed", "accepted")
    other_office = await http.post(
        f"{INTAKE}/v1/bundles/{bundle_id}/withdraw",
        json={"reason": "申请人撤回"},
        headers=http.headers_for(Role.clerk, "ELSEWHERE"),
    )
    assert other_office.status_code == 404, other_office.text
    answer = await http.post(
        f"{INTAKE}/v1/bundles/{bundle_id}/withdraw",
        json={"reason": "申请人撤回"},
        headers=clerk(http, body),
    )
    assert answer.status_code == 200, answer.text
    withdrawn = answer.json()
    assert withdrawn["status"] == "withdrawn" and withdrawn["kept"] == []
    assert sorted(withdrawn["withdrawn"]) == sorted(m["case_id"] for m in created["members"])
    again = await http.post(
        f"{INTAKE}/v1/bundles/{bundle_id}/withdraw", json={}, headers=clerk(http, body)
    )
    assert again.status_code == 409 and again.json()["code"] == "invalid_state", again.text

    async def told() -> dict[str, Any] | None:
        view = await bundle_view(http, bundle_id)
        types = [e["type"] for e in view["timeline"]]
        return view if "gov.bundle.withdrawn.v1" in types else None

    view = await eventually(told, what=f"{bundle_id}'s withdrawal in its timeline")
    assert view["status"] == "withdrawn"
    assert {m["status"] for m in view["members"]} == {"withdrawn"}
    # Approval hears of it: the routed member leaves the worklist.
    slow = member(view, ISSUE_SLOW)

    async def off_the_worklist() -> bool:
        listed = await http.get(
            f"{APPROVAL}/v1/worklist", params={"department": slow["route"]["handled_by"]}
        )
        return all(e["case_id"] != slow["case_id"] for e in listed.json())

    await eventually(off_the_worklist, what=f"{slow['case_id']} off the worklist")


async def test_a_resubmission_with_the_same_key_is_the_same_bundle(
    raw: dict[str, Any], http: ActingClient, rng: random.Random
) -> None:
    body = application(raw, CHAIN, rng, answers={"extra": False})
    key = f"e2e-bundle-{uuid.uuid4()}"
    first = await submit(http, body, key=key)
    second = await submit(http, body, key=key)
    assert second["bundle_id"] == first["bundle_id"]
    assert [m["case_id"] for m in second["members"]] == [m["case_id"] for m in first["members"]]
    other = await http.post(
        f"{INTAKE}/v1/bundles",
        json={**body, "answers": {"extra": True}},
        headers=clerk(http, body) | {"Idempotency-Key": key},
    )
    assert other.status_code == 409, other.text
    assert other.json()["code"] == "idempotency_key_reused"


# --------------------------------------------------------------------------- refusals


async def test_every_refusal_has_its_code(
    raw: dict[str, Any], http: ActingClient, rng: random.Random
) -> None:
    async def refused(body: dict[str, Any], code: str) -> dict[str, Any]:
        answer = await http.post(f"{INTAKE}/v1/bundles", json=body, headers=clerk(http, body))
        assert answer.status_code == 422, answer.text
        problem: dict[str, Any] = answer.json()
        assert problem["code"] == code, problem
        return problem

    good = application(raw, CHAIN, rng, answers={"extra": False})
    await refused({**good, "bundle_code": "E2E-B-NONE"}, "unknown_bundle")
    unanswered = await refused({**good, "answers": {"colour": "red"}}, "invalid_answers")
    assert {e["field"] for e in unanswered["errors"]} == {"answers.extra", "answers.colour"}
    await refused({**application(raw, LATER, rng)}, "bundle_not_effective")
    bad_id = copy.deepcopy(good)
    bad_id["applicant"]["id_number"] = bad_id["applicant"]["id_number"][:-1] + (
        "0" if bad_id["applicant"]["id_number"][-1] != "0" else "1"
    )
    await refused(bad_id, "invalid_id_number")
    street = next(o["code"] for o in raw["offices"] if o["kind"] == "street_center")
    at_street = await refused({**good, "office_code": street}, "office_not_allowed")
    assert at_street["guidance"]["levels"] == ["municipal", "district"]
    await refused({**good, "office_code": "E2E-NO-OFFICE"}, "unknown_office")
    await refused(
        {**good, "materials": [*good["materials"], {"code": "E2E-NOT-A-MATERIAL"}]},
        "unknown_material",
    )
    await refused(
        {**good, "materials": [{**good["materials"][0], "commitment": True}]},
        "commitment_not_allowed",
    )
    await refused(
        {**good, "materials": [*good["materials"], {"code": "E2E-LIC", "e_license_id": "NONE"}]},
        "invalid_license",
    )
    await refused({**good, "delivery": {"method": "postal"}}, "invalid_delivery")
    refused_online = await http.post(
        f"{INTAKE}/v1/bundles",
        json={**good, "channel": "online", "office_code": None},
        headers=http.headers_for(Role.clerk, "online"),
    )
    assert refused_online.status_code == 422, refused_online.text
    assert refused_online.json()["code"] == "office_not_allowed"


async def test_missing_materials_are_notified_once_and_completed_for_the_bundle(
    raw: dict[str, Any], http: ActingClient, rng: random.Random
) -> None:
    full = application(raw, PARALLEL, rng)
    left_out = full["materials"][0]["code"]
    body = {**full, "materials": full["materials"][1:]}
    created = await submit(http, body)
    assert created["missing_materials"] == [left_out]
    takers = {
        m["item"]
        for m in bundle_of(raw, PARALLEL)["members"]
        if any(s["code"] == left_out for s in item_of(raw, m["item"])["materials"])
    }
    for m in created["members"]:
        expected = "awaiting_supplement" if m["item_code"] in takers else "submitted"
        assert m["status"] == expected, m
    answer = await http.post(
        f"{INTAKE}/v1/bundles/{created['bundle_id']}/materials",
        json={"materials": [full["materials"][0]]},
        headers=clerk(http, body),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["missing_materials"] == []
    for m in answer.json()["members"]:
        assert m["status"] in ("submitted", *DECIDED_OR_ON), m
    for item_code in takers:
        await member_reaches(http, created["bundle_id"], item_code, *DECIDED_OR_ON)


# --------------------------------------------------------------------------- triage


async def test_a_member_failing_routing_waits_in_triage_while_the_others_go_on(
    raw: dict[str, Any], http: ActingClient, rng: random.Random, settings: CommonSettings
) -> None:
    body = application(raw, TRIAGE, rng)
    created = await submit(http, body)
    bundle_id = created["bundle_id"]
    view = await member_reaches(http, bundle_id, ORPHAN, "route_failed")
    orphan = member(view, ORPHAN)
    assert orphan["failure"]["code"] == "no_receiving_department"
    others = [m for m in view["members"] if m["item_code"] != ORPHAN]
    for m in others:
        await member_reaches(http, bundle_id, m["item_code"], *DECIDED_OR_ON)
    triage = await http.get(f"{ROUTING}/v1/triage")
    assert orphan["case_id"] in {e["case_id"] for e in triage.json()}

    # The fix: a district unit of the line where the applicant is; then the retry routes it.
    district = next(
        d["code"]
        for d in raw["districts"]
        if body["applicant"]["division_code"] in [s["code"] for s in d.get("streets", [])]
    )
    fixed = copy.deepcopy(raw)
    unit = f"{district}-E2E-ORPHAN"
    fixed["departments"].append(
        {
            "code": unit,
            "name": "区级承办部门 (e2e)",
            "line": ORPHAN_LINE,
            "level": "district",
            "division": district,
        }
    )
    await load(http, fixed)
    try:
        retried = await http.post(f"{ROUTING}/v1/triage/{orphan['case_id']}/retry")
        assert retried.status_code == 200, retried.text
        assert retried.json()["route"]["handled_by"] == unit
        view = await member_reaches(http, bundle_id, ORPHAN, *DECIDED_OR_ON)
        assert member(view, ORPHAN)["route"]["handled_by"] == unit
        assert member(view, ORPHAN)["failure"] is None
        # Failed and routed, the member's routing events name its bundle.
        records = [
            json.loads(r.value or b"null")
            for r in await read_topic(settings, ROUTING_TOPIC, idle=0.3)
            if header(r, "ce_subject") == orphan["case_id"]
        ]
        assert sorted(routing_outcome(r) for r in records) == ["route_failed", "routed"]
        assert {(r["bundle_id"], r["bundle_code"]) for r in records} == {(bundle_id, TRIAGE)}
    finally:
        await load(http, raw)


# --------------------------------------------------------------------------- access


async def test_a_bundle_is_taken_and_read_as_a_case_is(
    raw: dict[str, Any], http: ActingClient, rng: random.Random
) -> None:
    body = application(raw, PARALLEL, rng)
    reviewer = http.headers_for(Role.reviewer, bundle_of(raw, PARALLEL)["lead"])
    as_reviewer = await http.post(f"{INTAKE}/v1/bundles", json=body, headers=reviewer)
    assert as_reviewer.status_code == 403, as_reviewer.text
    elsewhere = http.headers_for(Role.clerk, "ELSEWHERE")
    other_office = await http.post(f"{INTAKE}/v1/bundles", json=body, headers=elsewhere)
    assert other_office.status_code == 403, other_office.text
    created = await submit(http, body)
    path = f"{INTAKE}/v1/bundles/{created['bundle_id']}"

    hidden = await http.get(path, headers=elsewhere)
    assert hidden.status_code == 404 and hidden.json()["code"] == "bundle_not_found", hidden.text
    missing = await http.get(f"{INTAKE}/v1/bundles/NO-SUCH-BUNDLE", headers=clerk(http, body))
    assert missing.status_code == 404 and missing.json()["code"] == "bundle_not_found"
    clear = await http.get(path, headers=clerk(http, body))
    assert clear.status_code == 200, clear.text
    assert clear.json()["applicant"]["id_number"] == body["applicant"]["id_number"]
    masked = await http.get(path, headers=http.headers_for(Role.operator))
    assert masked.status_code == 200, masked.text
    assert masked.json()["applicant"]["id_number"] != body["applicant"]["id_number"]
    no_materials = await http.post(
        f"{path}/materials",
        json={"materials": [body["materials"][0]]},
        headers=clerk(http, body),
    )
    assert no_materials.status_code == 409, no_materials.text  # nobody waits for materials
    as_operator = await http.post(
        f"{path}/withdraw", json={}, headers=http.headers_for(Role.operator)
    )
    assert as_operator.status_code == 403, as_operator.text
