"""Bundles (一件事一次办, DESIGN.md §8) around the whole loop on the real stack: one form at one
window fans out to departments at several levels, the results wait for each other and go out
once, one rating counts for every member department; and a member that fails routing waits in
triage while the others go on, the bundle completing once it is retried.

Bundles and members are picked from the demo catalog by their properties (modes, lines,
dependencies), never by code.
"""

from __future__ import annotations

import copy
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.cli.applicants import (
    bundle_application_for,
    created_members,
    default_answers,
    streets,
)
from tests.conftest import eventually
from tests.e2e.conftest import APPROVAL, DELIVERY, INTAKE, ROUTING

pytestmark = pytest.mark.e2e

RESULT = {"approved", "result_issued", "delivered", "closed"}  # a member that has its result
HANDED_OVER = {"delivered", "closed"}


# --------------------------------------------------------------------------- picking


def items_of(catalog: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["code"]: i for i in catalog["items"]}


def level_of(item: dict[str, Any]) -> str:
    """Where routing sends the item (rules 4-7): the delegated level, else municipal."""
    return str(item["delegated_to"]) if item["mode"] == "delegated" else "municipal"


def line_of(catalog: dict[str, Any], item: dict[str, Any]) -> str:
    return next(str(d["line"]) for d in catalog["departments"] if d["code"] == item["owner"])


def deciders(catalog: dict[str, Any], bundle: dict[str, Any]) -> set[tuple[str, str]]:
    """(line, level) of every member created when every question is answered yes: one
    deciding department each for one applicant."""
    items = items_of(catalog)
    return {
        (line_of(catalog, items[m["item"]]), level_of(items[m["item"]]))
        for m in created_members(bundle, default_answers(bundle))
    }


def bundles_where(catalog: dict[str, Any], predicate: Any) -> list[dict[str, Any]]:
    found = [b for b in catalog.get("bundles", []) if predicate(b)]
    assert found, "no bundle of the demo catalog fits the test"
    return found


# --------------------------------------------------------------------------- moving a bundle on


async def bundle_view(http: httpx.AsyncClient, bundle_id: str) -> dict[str, Any]:
    answer = await http.get(f"{INTAKE}/v1/bundles/{bundle_id}")
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


async def results_of(http: httpx.AsyncClient, bundle_id: str) -> dict[str, Any]:
    answer = await http.get(f"{DELIVERY}/v1/bundles/{bundle_id}/results")
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


async def submit_bundle(http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    answer = await http.post(f"{INTAKE}/v1/bundles", json=body)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


async def decide_until_ready(
    http: httpx.AsyncClient, bundle_id: str, *, timeout: float = 90
) -> dict[str, Any]:
    """Approve each member once its department accepted it, until delivery holds every
    member's result (or end) for the one pickup; no result is handed over before that."""
    decided: set[str] = set()

    async def ready() -> dict[str, Any] | None:
        view = await bundle_view(http, bundle_id)
        for member in view["members"]:
            assert member["status"] not in HANDED_OVER, (member, "handed over before the rest")
            if member["status"] == "accepted" and member["case_id"] not in decided:
                answer = await http.post(
                    f"{APPROVAL}/v1/cases/{member['case_id']}/decisions",
                    json={
                        "department": member["route"]["handled_by"],
                        "decision": "approve",
                        "reason": "材料齐全，符合法定条件",
                    },
                )
                assert answer.status_code == 200, answer.text
                decided.add(member["case_id"])
        answer = await http.get(f"{DELIVERY}/v1/bundles/{bundle_id}/results")
        if answer.status_code == 404:  # delivery has not read the bundle's submission yet
            return None
        assert answer.status_code == 200, answer.text
        results: dict[str, Any] = answer.json()
        return results if results["ready_at"] is not None else None

    found: dict[str, Any] = await eventually(
        ready, timeout=timeout, interval=0.3, what=f"every member of {bundle_id} decided"
    )
    return found


async def rating_totals(http: httpx.AsyncClient) -> dict[str | None, int]:
    answer = await http.get(f"{DELIVERY}/v1/ratings/stats", params={"by": "department"})
    assert answer.status_code == 200, answer.text
    return {row["key"]: row["total"] for row in answer.json()}


# --------------------------------------------------------------------------- one delivery


async def test_a_bundle_across_departments_and_levels_is_delivered_once_and_rated_once(
    catalog: dict[str, Any], http: httpx.AsyncClient, rng: random.Random
) -> None:
    bundle = rng.choice(
        bundles_where(
            catalog,
            lambda b: (
                len(deciders(catalog, b)) >= 3
                and len({level for _, level in deciders(catalog, b)}) >= 2
            ),
        )
    )
    body = bundle_application_for(catalog, bundle, rng, delivery="counter_pickup")
    created = await submit_bundle(http, body)
    bundle_id = created["bundle_id"]
    members = {m["case_id"]: m for m in created["members"]}
    assert created["status"] == "in_progress" and created["missing_materials"] == []
    assert len(members) == len(created_members(bundle, body["answers"]))

    results = await decide_until_ready(http, bundle_id)
    view = await bundle_view(http, bundle_id)
    # One application fanned out: three or more deciding departments at two or more levels.
    routes = [m["route"] for m in view["members"]]
    assert all(routes), view["members"]
    assert len({r["handled_by"] for r in routes}) >= 3
    assert len({r["level"] for r in routes}) >= 2
    # Every result waits at the counter of the office that took the bundle: none is closed.
    assert view["status"] == "in_progress"
    assert {m["status"] for m in view["members"]} <= RESULT - HANDED_OVER
    assert results["pickup_office"] == body["office_code"] and results["open_members"] == []
    one = next(iter(members))
    own = await http.post(
        f"{DELIVERY}/v1/cases/{one}/pickup", json={"office_code": body["office_code"]}
    )
    assert own.status_code == 409 and own.json()["code"] == "bundle_member", own.text

    # One pickup hands every result over; the bundle and every member close.
    picked = await http.post(
        f"{DELIVERY}/v1/bundles/{bundle_id}/pickup", json={"office_code": body["office_code"]}
    )
    assert picked.status_code == 200, picked.text
    assert {r["case_id"] for r in picked.json()["results"]} == set(members)

    async def closed() -> dict[str, Any] | None:
        now = await bundle_view(http, bundle_id)
        done = now["status"] == "closed" and all(m["status"] == "closed" for m in now["members"])
        return now if done else None

    final = await eventually(closed, what=f"{bundle_id} and its members closed")
    again = await http.post(
        f"{DELIVERY}/v1/bundles/{bundle_id}/pickup", json={"office_code": body["office_code"]}
    )
    assert again.status_code == 409, again.text
    types = [e["type"] for e in final["timeline"] if e.get("case_id") is None]
    assert types.count("gov.bundle.delivered.v1") == 1 and types.count("gov.bundle.closed.v1") == 1
    for member in final["members"]:
        member_view = (await http.get(f"{INTAKE}/v1/cases/{member['case_id']}")).json()
        assert member_view["bundle_id"] == bundle_id
        member_types = [e["type"] for e in member_view["timeline"]]
        assert member_types.count("gov.case.delivered.v1") == 1, member_types
        assert member_types.count("gov.case.closed.v1") == 1, member_types

    # One rating for the bundle, counted once for each member's department.
    departments = {r["handled_by"] for r in routes}
    before = await rating_totals(http)
    refused = await http.post(
        f"{DELIVERY}/v1/cases/{one}/rating", json={"rating": "satisfied", "comment": None}
    )
    assert refused.status_code == 409 and refused.json()["code"] == "bundle_member"
    rated = await http.post(
        f"{DELIVERY}/v1/bundles/{bundle_id}/rating",
        json={"rating": "very_satisfied", "comment": "一次办成"},
    )
    assert rated.status_code == 201, rated.text
    assert set(rated.json()["departments"]) == departments
    twice = await http.post(
        f"{DELIVERY}/v1/bundles/{bundle_id}/rating", json={"rating": "basic", "comment": None}
    )
    assert twice.status_code == 409, twice.text

    async def counted() -> dict[str | None, int] | None:
        after = await rating_totals(http)
        grown = {d: after.get(d, 0) - before.get(d, 0) for d in departments}
        return after if all(n >= 1 for n in grown.values()) else None

    after = await eventually(counted, what="the rating counted for every member department")
    assert {d: after[d] - before.get(d, 0) for d in departments} == dict.fromkeys(departments, 1)


# --------------------------------------------------------------------------- triage


@pytest.fixture
async def demo_catalog_back(
    catalog: dict[str, Any], http: httpx.AsyncClient
) -> AsyncIterator[dict[str, Any]]:
    """The demo catalog in force again when the test ends, pass or fail."""
    yield catalog
    answer = await http.post(f"{ROUTING}/v1/catalog", json=catalog)
    assert answer.status_code == 201, answer.text


def failing_member(catalog: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A bundle and a member of it submitted at once (no `after`, nobody waits for it),
    delegated to a level where no other member of the bundle is decided by its line: without
    that line's unit in the applicant's division it fails routing, and only it."""
    items = items_of(catalog)
    for bundle in catalog.get("bundles", []):
        created = created_members(bundle, default_answers(bundle))
        waited_for = {code for m in created for code in m.get("after") or ()}
        for member in created:
            item = items[member["item"]]
            if member.get("after") or member["item"] in waited_for or item["mode"] != "delegated":
                continue
            mine = (line_of(catalog, item), level_of(item))
            others = [m for m in created if m is not member]
            if len(others) >= 2 and all(
                (line_of(catalog, items[m["item"]]), level_of(items[m["item"]])) != mine
                for m in others
            ):
                return bundle, member
    raise AssertionError("no bundle of the demo catalog has a member that can fail alone")


async def test_a_member_failing_routing_waits_in_triage_while_the_others_go_on(
    demo_catalog_back: dict[str, Any], http: httpx.AsyncClient, rng: random.Random
) -> None:
    catalog = demo_catalog_back
    bundle, member = failing_member(catalog)
    item = items_of(catalog)[member["item"]]
    district, street = rng.choice(streets(catalog))
    division = street if item["delegated_to"] == "street" else district
    line = line_of(catalog, item)
    # A catalog version that lost the member's unit in the applicant's division.
    faulty = copy.deepcopy(catalog)
    faulty["departments"] = [
        d
        for d in faulty["departments"]
        if not (
            d["line"] == line and d["level"] == item["delegated_to"] and d["division"] == division
        )
    ]
    assert len(faulty["departments"]) == len(catalog["departments"]) - 1
    loaded = await http.post(f"{ROUTING}/v1/catalog", json=faulty)
    assert loaded.status_code == 201, loaded.text

    body = bundle_application_for(
        catalog, bundle, rng, delivery="counter_pickup", district=district, street=street
    )
    created = await submit_bundle(http, body)
    bundle_id = created["bundle_id"]
    failing = next(m["case_id"] for m in created["members"] if m["item_code"] == item["code"])

    # The member waits in triage; every other member goes on to its result meanwhile.
    decided: set[str] = set()

    async def others_have_results() -> dict[str, Any] | None:
        view = await bundle_view(http, bundle_id)
        for m in view["members"]:
            if m["status"] == "accepted" and m["case_id"] not in decided:
                await http.post(
                    f"{APPROVAL}/v1/cases/{m['case_id']}/decisions",
                    json={
                        "department": m["route"]["handled_by"],
                        "decision": "approve",
                        "reason": "材料齐全",
                    },
                )
                decided.add(m["case_id"])
        mine = next(m for m in view["members"] if m["case_id"] == failing)
        rest = [m for m in view["members"] if m["case_id"] != failing]
        done = mine["status"] == "route_failed" and all(m["status"] in RESULT for m in rest)
        return view if done else None

    view = await eventually(
        others_have_results, timeout=90, interval=0.3, what="the others' results"
    )
    mine = next(m for m in view["members"] if m["case_id"] == failing)
    assert mine["failure"]["code"] == "no_receiving_department", mine
    triage = (await http.get(f"{ROUTING}/v1/triage", params={"limit": 1000})).json()
    assert any(e["case_id"] == failing for e in triage)
    held = await results_of(http, bundle_id)
    assert held["ready_at"] is None and held["open_members"] == [failing]
    assert view["status"] == "in_progress"

    # The catalog is fixed, the operator retries: the member is routed, decided, and the
    # bundle goes out once with every result.
    fixed = await http.post(f"{ROUTING}/v1/catalog", json=catalog)
    assert fixed.status_code == 201, fixed.text
    retried = await http.post(f"{ROUTING}/v1/triage/{failing}/retry")
    assert retried.status_code == 200, retried.text
    assert (
        retried.json()["failure"] is None
        and retried.json()["route"]["level"] == item["delegated_to"]
    )
    await decide_until_ready(http, bundle_id)
    picked = await http.post(
        f"{DELIVERY}/v1/bundles/{bundle_id}/pickup", json={"office_code": body["office_code"]}
    )
    assert picked.status_code == 200, picked.text

    async def closed() -> dict[str, Any] | None:
        # The bundle's closing (bundle.v1) and its members' (case.delivery.v1) reach intake
        # in either order: wait for all of them.
        now = await bundle_view(http, bundle_id)
        done = now["status"] == "closed" and all(m["status"] == "closed" for m in now["members"])
        return now if done else None

    final = await eventually(closed, what=f"{bundle_id} and its members closed after the retry")
    types = [e["type"] for e in final["timeline"] if e.get("case_id") == failing]
    assert types.index("gov.case.route_failed.v1") < types.index("gov.case.routed.v1")
    assert [e["type"] for e in final["timeline"]].count("gov.bundle.delivered.v1") == 1
