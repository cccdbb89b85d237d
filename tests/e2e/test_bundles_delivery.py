"""Bundles at approval and delivery, end to end (DESIGN.md §8: 一件事一次办, 一次送达).

Driven through Kafka and REST without intake's bundle endpoint: the test plays the intake
system that took the bundle. It publishes `gov.bundle.submitted.v1` on bundle.v1 and each
member as an ordinary `gov.case.submitted.v1` (naming its bundle) on case.intake.v1; routing,
approval and delivery take it from there, and departments decide through approval's REST.
Then: every member's result waits for the last one and the bundle goes out once (electronic:
all at once; counter_pickup: one pickup at the office); a withdrawn member counts as ended;
the bundle takes one rating, counted for every member's department; a member's own pickup or
rating is refused `bundle_member`; the bundle's clock warns and goes overdue for its lead by
the shifted clock (never by sleeping).

Members are items picked by their properties (timed, not entrusted, one category, each of
another owner), taken at the municipal center, which may take any item.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from contracts.common import Application, CaseStatus, Channel, DeliveryMethod
from contracts.events import (
    BUNDLE_TOPIC,
    DELIVERY_TOPIC,
    INTAKE_TOPIC,
    BundleMemberRef,
    BundleSubmitted,
    CaseSubmitted,
    CaseWithdrawn,
    Event,
)
from services.cli.applicants import application_for, streets
from services.cli.devclient import ActingClient
from services.common.auth import Role
from services.common.envelope import Envelope
from services.common.settings import CommonSettings
from tests.conftest import eventually
from tests.e2e.conftest import (
    APPROVAL,
    DELIVERY,
    decide_when_listed,
    items_where,
    shifted_services,
    wait_status,
)
from tests.kafka_helpers import header, produce, read_topic

pytestmark = pytest.mark.e2e

DENY = {"decision": "deny", "reason": "不符合条件", "legal_basis": "《行政许可法》第三十八条"}
APPROVE = {"decision": "approve", "reason": "材料齐全"}


@dataclass
class SentBundle:
    bundle_id: str
    office: str
    lead: str
    members: list[str]
    departments: dict[str, str] = field(default_factory=dict)  # case id -> deciding department


def member_items(catalog: dict[str, Any], rng: random.Random, size: int) -> list[dict[str, Any]]:
    """`size` timed items of one category, each of another owner (so another department)."""
    timed = items_where(
        catalog,
        lambda i: (
            not i.get("instant")
            and i["mode"] != "entrusted"  # entrusted intake needs a signed handover
            and int(i.get("time_limit_days") or 0) >= 1
        ),
    )
    for category in rng.sample(["enterprise", "individual"], 2):
        by_owner: dict[str, list[dict[str, Any]]] = {}
        for item in timed:
            if item["category"] == category:
                by_owner.setdefault(item["owner"], []).append(item)
        if len(by_owner) >= size:
            owners = rng.sample(sorted(by_owner), size)
            return [rng.choice(by_owner[o]) for o in owners]
    raise AssertionError(f"the catalog has no {size} timed items of one category and owners")


def municipal_center(catalog: dict[str, Any]) -> str:
    return str(next(o["code"] for o in catalog["offices"] if o["kind"] == "municipal_center"))


async def publish(settings: CommonSettings, topic: str, events: list[Event], key: str) -> None:
    envelopes = [
        Envelope(
            type=e.TYPE,
            source="/tongban/intake",
            subject=str(getattr(e, "case_id", None) or key),
            data=e.model_dump(mode="json"),
        )
        for e in events
    ]
    await produce(settings, topic, [e.to_record() for e in envelopes])


async def send_bundle(
    settings: CommonSettings,
    http: ActingClient,
    catalog: dict[str, Any],
    rng: random.Random,
    *,
    size: int,
    method: DeliveryMethod,
    time_limit_days: int = 20,
) -> SentBundle:
    """A bundle taken at the municipal center, as intake would publish it: the bundle event
    first (delivery knows it before any member's result), then its members' submissions."""
    items = member_items(catalog, rng, size)
    district, street = rng.choice(streets(catalog))
    office = municipal_center(catalog)
    bodies = [
        application_for(
            catalog,
            item,
            rng,
            channel="counter",
            delivery=method.value,
            district=district,
            street=street,
        )
        for item in items
    ]
    applicant = {**bodies[0]["applicant"], "division_code": street}
    delivery = bodies[0]["delivery"]  # one applicant, one way to get every result
    applications = [
        Application.model_validate(
            {
                **body,
                "applicant": applicant,
                "office_code": office,
                "delivery": delivery,
            }
        )
        for body in bodies
    ]
    bundle_id = f"BD-E2E-{uuid.uuid4().hex[:10].upper()}"
    members = [f"{bundle_id}-{n}" for n in range(size)]
    now = datetime.now(UTC)
    bundle = SentBundle(bundle_id, office, items[0]["owner"], members)
    submitted = BundleSubmitted(
        bundle_id=bundle_id,
        bundle_code="E2E-BUNDLE",
        bundle_name="测试一件事",
        lead=bundle.lead,
        time_limit_days=time_limit_days,
        channel=Channel.counter,
        office_code=office,
        members=[
            BundleMemberRef(case_id=c, item_code=i["code"], status=CaseStatus.submitted)
            for c, i in zip(members, items, strict=True)
        ],
        delivery_method=method,
        delivery_address=applications[0].delivery.address,
        submitted_at=now,
    )
    await publish(settings, BUNDLE_TOPIC, [submitted], bundle_id)

    async def delivery_knows_it() -> bool:
        answer = await http.get(f"{DELIVERY}/v1/bundles/{bundle_id}/results")
        return answer.status_code == 200

    await eventually(delivery_knows_it, what=f"delivery knows bundle {bundle_id}")
    cases = [
        CaseSubmitted(
            case_id=case_id,
            bundle_id=bundle_id,
            bundle_code=submitted.bundle_code,
            application=application,
            submitted_at=now,
        )
        for case_id, application in zip(members, applications, strict=True)
    ]
    await publish(settings, INTAKE_TOPIC, list(cases), bundle_id)
    for case_id in members:
        view = await wait_status(http, case_id, "accepted")
        bundle.departments[case_id] = view["route"]["handled_by"]
    return bundle


async def bundle_results(http: httpx.AsyncClient, bundle_id: str) -> dict[str, Any]:
    answer = await http.get(f"{DELIVERY}/v1/bundles/{bundle_id}/results")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def results_where(http: httpx.AsyncClient, bundle_id: str, what: str, test: Any) -> Any:
    async def check() -> dict[str, Any] | None:
        body = await bundle_results(http, bundle_id)
        return body if test(body) else None

    return await eventually(check, what=f"bundle {bundle_id}: {what}")


async def decide(http: httpx.AsyncClient, bundle: SentBundle, case_id: str, body: Any) -> None:
    answer = await decide_when_listed(http, case_id, bundle.departments[case_id], body)
    assert answer.status_code == 200, answer.text


def types_of(records: list[Any]) -> list[str]:
    return [header(r, "ce_type") or "" for r in records]


async def test_an_electronic_bundle_goes_out_once_after_its_last_member_and_takes_one_rating(
    catalog: dict[str, Any],
    http: ActingClient,
    rng: random.Random,
    settings: CommonSettings,
) -> None:
    bundle = await send_bundle(
        settings, http, catalog, rng, size=3, method=DeliveryMethod.electronic
    )
    approved, denied, withdrawn = bundle.members

    await decide(http, bundle, approved, APPROVE)
    held = await results_where(
        http, bundle.bundle_id, "the first result held", lambda b: b["results"]
    )
    assert held["status"] == "in_progress"
    assert [r["status"] for r in held["results"]] == ["result_issued"]  # electronic, yet held
    assert held["open_members"] == [denied, withdrawn]
    assert held["results"][0]["bundle_id"] == bundle.bundle_id
    at_approval = (await http.get(f"{APPROVAL}/v1/cases/{approved}")).json()
    assert at_approval["bundle_id"] == bundle.bundle_id
    # A member's own pickup or rating: refused, it goes with the bundle.
    for action, body in (("pickup", {}), ("rating", {"rating": "satisfied"})):
        answer = await http.post(f"{DELIVERY}/v1/cases/{approved}/{action}", json=body)
        assert answer.status_code == 409, answer.text
        assert answer.json()["code"] == "bundle_member"

    ended = CaseWithdrawn(
        case_id=withdrawn,
        bundle_id=bundle.bundle_id,
        reason="applicant",
        withdrawn_at=datetime.now(UTC),
    )
    await publish(settings, INTAKE_TOPIC, [ended], bundle.bundle_id)
    await results_where(
        http, bundle.bundle_id, "the withdrawn member ended", lambda b: b["ended"] == [withdrawn]
    )
    assert (await bundle_results(http, bundle.bundle_id))["status"] == "in_progress"

    await decide(http, bundle, denied, DENY)
    closed = await results_where(
        http, bundle.bundle_id, "closed", lambda b: b["status"] == "closed"
    )
    last_issued = max(datetime.fromisoformat(r["issued_at"]) for r in closed["results"])
    for result in closed["results"]:
        assert result["status"] == "closed"
        assert datetime.fromisoformat(result["closed_at"]) >= last_issued  # after the last
    for case_id in (approved, denied):
        await wait_status(http, case_id, "closed")
    records = await read_topic(settings, BUNDLE_TOPIC, min_records=1, idle=0.5)
    mine = [r for r in records if r.key == bundle.bundle_id.encode()]
    assert types_of(mine) == [
        "gov.bundle.submitted.v1",
        "gov.bundle.delivered.v1",
        "gov.bundle.closed.v1",
    ]

    # One rating for the bundle, at its office: one per member department.
    clerk = http.headers_for(Role.clerk, bundle.office)
    url = f"{DELIVERY}/v1/bundles/{bundle.bundle_id}/rating"
    body = {"rating": "dissatisfied", "comment": "跑了两个窗口"}
    answer = await http.post(url, json=body, headers=clerk)
    assert answer.status_code == 201, answer.text
    departments = sorted({bundle.departments[approved], bundle.departments[denied]})
    assert answer.json()["departments"] == departments
    again = await http.post(url, json=body, headers=clerk)
    assert again.status_code == 409 and again.json()["code"] == "already_rated"
    keys = (approved.encode(), denied.encode())
    rated = [
        r
        for r in await read_topic(settings, DELIVERY_TOPIC, min_records=1, idle=0.5)
        if header(r, "ce_type") == "gov.case.rated.v1" and r.key in keys
    ]
    assert sorted(r.key for r in rated) == sorted(keys)
    records = await read_topic(settings, BUNDLE_TOPIC, min_records=1, idle=0.5)
    assert types_of([r for r in records if r.key == bundle.bundle_id.encode()])[-1] == (
        "gov.bundle.rated.v1"
    )
    # The bad rating opens a follow-up at each member's department.
    for case_id in (approved, denied):
        department = bundle.departments[case_id]

        async def followed_up(case_id: str = case_id, department: str = department) -> bool:
            answer = await http.get(f"{APPROVAL}/v1/followups", params={"department": department})
            return case_id in [f["case_id"] for f in answer.json()]

        await eventually(followed_up, what=f"a follow-up of {case_id} at {department}")
    stats = await http.get(f"{DELIVERY}/v1/ratings/stats", params={"by": "department"})
    counted = {row["key"]: row["dissatisfied"] for row in stats.json()}
    assert all(counted.get(d, 0) >= 1 for d in departments)


async def test_a_counter_pickup_bundle_waits_for_one_pickup_at_its_office(
    catalog: dict[str, Any],
    http: ActingClient,
    rng: random.Random,
    settings: CommonSettings,
) -> None:
    bundle = await send_bundle(
        settings, http, catalog, rng, size=2, method=DeliveryMethod.counter_pickup
    )
    first, second = bundle.members
    clerk = http.headers_for(Role.clerk, bundle.office)
    pickup = f"{DELIVERY}/v1/bundles/{bundle.bundle_id}/pickup"

    await decide(http, bundle, first, APPROVE)
    await results_where(http, bundle.bundle_id, "one result", lambda b: len(b["results"]) == 1)
    early = await http.post(pickup, json={"office_code": bundle.office}, headers=clerk)
    assert early.status_code == 409 and early.json()["code"] == "bundle_not_ready", early.text

    await decide(http, bundle, second, APPROVE)
    ready = await results_where(
        http, bundle.bundle_id, "ready at the counter", lambda b: b["ready_at"] is not None
    )
    assert ready["status"] == "in_progress" and ready["pickup_office"] == bundle.office
    assert {r["status"] for r in ready["results"]} == {"result_issued"}
    answer = await http.post(f"{DELIVERY}/v1/cases/{first}/pickup", json={})
    assert answer.status_code == 409 and answer.json()["code"] == "bundle_member"

    collected = await http.post(pickup, json={"office_code": bundle.office}, headers=clerk)
    assert collected.status_code == 200, collected.text
    assert collected.json()["status"] == "closed"
    assert {r["status"] for r in collected.json()["results"]} == {"closed"}
    twice = await http.post(pickup, json={"office_code": bundle.office}, headers=clerk)
    assert twice.status_code == 409 and twice.json()["code"] == "invalid_state"
    for case_id in bundle.members:
        view = await wait_status(http, case_id, "closed", with_events=["gov.case.delivered.v1"])
        assert view["bundle_id"] in (bundle.bundle_id, None)  # intake names it once it can


async def test_the_bundle_clock_warns_and_goes_overdue_for_its_lead(
    catalog: dict[str, Any],
    http: ActingClient,
    rng: random.Random,
    settings: CommonSettings,
) -> None:
    """Two members accepted and left undecided on a bundle limit of 2 working days: with the
    services' clock 20 days ahead, the bundle's warnings and overdue come on bundle.v1 for
    the lead (ce_handledby), naming both members, and it is among the bundles at risk."""
    bundle = await send_bundle(
        settings, http, catalog, rng, size=2, method=DeliveryMethod.electronic, time_limit_days=2
    )

    async def at_risk() -> dict[str, Any] | None:
        answer = await http.get(f"{APPROVAL}/v1/sla/bundles", params={"within_days": 30})
        assert answer.status_code == 200, answer.text
        return next((b for b in answer.json() if b["bundle_id"] == bundle.bundle_id), None)

    listed = await eventually(at_risk, what="the bundle among the clocks at risk")
    assert listed["lead"] == bundle.lead and not listed["overdue"]
    assert listed["open_members"] == bundle.members

    async with shifted_services(20 * 86400):

        async def fired() -> list[Any] | None:
            records = await read_topic(settings, BUNDLE_TOPIC, min_records=1, idle=0.3)
            mine = [r for r in records if r.key == bundle.bundle_id.encode()]
            kinds = types_of(mine)
            return mine if "gov.bundle.overdue.v1" in kinds else None

        records = await eventually(fired, timeout=60, what="the bundle's overdue")
        clock = [r for r in records if header(r, "ce_source") == "/tongban/approval"]
        assert sorted(types_of(clock)) == [
            "gov.bundle.overdue.v1",
            "gov.bundle.sla_warning.v1",
            "gov.bundle.sla_warning.v1",
        ]
        for record in clock:
            assert header(record, "ce_handledby") == bundle.lead
            assert header(record, "ce_subject") == bundle.bundle_id
        overdue = await at_risk()
        assert overdue is not None and overdue["overdue"] and overdue["warned"]
    # Decided, the bundle's clock stops: it is no longer at risk.
    for case_id in bundle.members:
        await decide(http, bundle, case_id, APPROVE)

    async def off_the_board() -> bool:
        return await at_risk() is None

    await eventually(off_the_board, what="the bundle's clock stopped")
    await results_where(http, bundle.bundle_id, "closed", lambda b: b["status"] == "closed")
