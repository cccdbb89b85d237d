"""Approval and delivery in cases across regions (跨省通办, DESIGN.md §9), end to end over the
real broker, with the partner region simulated as MirrorMaker would make it: its records for
this region (云州, city code of the demo catalog) on `region9.xregion.out.v1`, carrying
`ce_tocity` = this region and `ce_fromcity` = the partner (LZ); and what intake would import
from it on this region's own case topics, `ce_fromcity` set.

- Origin: this region routed a case to LZ (its routed event, path `cross_region`, as routing
  publishes it): approval takes nothing; LZ's relayed result_issued makes a result held at the
  origin office, whose pickup emits this region's delivered and closed.
- Handler: a case adopted from LZ (submitted with `origin`, taken at the municipal center) is
  routed, accepted, approved (an instant item) and its counter_pickup result issued here; its
  pickup here is refused 409 `pickup_at_origin`, and LZ's imported delivered and closed end it
  without a new event of this region.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka.structs import ConsumerRecord

from contracts.common import Application, CrossRegionOrigin, DeliveryMethod, ResultDocument
from contracts.events import (
    DELIVERY_TOPIC,
    INTAKE_TOPIC,
    ROUTING_TOPIC,
    XREGION_TOPIC,
    CaseClosed,
    CaseDelivered,
    CaseResultIssued,
    CaseRouted,
    CaseSubmitted,
    Event,
)
from services.cli.applicants import application_for
from services.cli.devclient import ActingClient
from services.common.auth import Role
from services.common.envelope import Envelope
from services.common.kafka import TopicSpec, ensure_topics
from services.common.settings import CommonSettings
from tests.conftest import eventually
from tests.e2e.conftest import APPROVAL, DELIVERY, items_where
from tests.kafka_helpers import header, produce, read_topic
from tests.unit.test_approval_review import cross_region_route, make_routed

pytestmark = pytest.mark.e2e

PARTNER = "LZ"
PARTNER_OFFICE = "LZ01-DC"
MIRRORED = f"region9.{XREGION_TOPIC}"  # the partner's xregion.out.v1 as MirrorMaker names it
# A partner topic made after the services started is found by their pattern subscription at
# the next metadata refresh (kafka_metadata_max_age_ms: 30 s).
PARTNER_TIMEOUT_S = 75.0


def record(
    payload: Event, *, source: str, tocity: str | None = None, fromcity: str | None = None
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    handledby = payload.route.handled_by if isinstance(payload, CaseRouted) else None
    return Envelope(
        type=payload.TYPE,
        source=source,
        subject=getattr(payload, "case_id"),  # noqa: B009
        data=payload.model_dump(mode="json"),
        handledby=handledby,
        tocity=tocity,
        fromcity=fromcity,
    ).to_record()


def counter_application(
    catalog: dict[str, Any], rng: random.Random, *, office_kind: str, instant: bool
) -> tuple[dict[str, Any], str, Application]:
    """An online item (instant or not) taken at a counter of `office_kind` for pickup there:
    the item, the office and the application."""
    items = items_where(
        catalog,
        lambda i: i["mode"] == "online" and bool(i.get("instant")) is instant,
    )
    assert items, "the demo catalog has no such online item"
    item = rng.choice(items)
    office = next(o["code"] for o in catalog["offices"] if o["kind"] == office_kind)
    body = application_for(catalog, item, rng, channel="counter", delivery="counter_pickup")
    return item, office, Application.model_validate({**body, "office_code": office})


def of_case(records: list[ConsumerRecord[bytes, bytes]], case_id: str) -> list[tuple[str, Any]]:
    return [
        (header(r, "ce_type") or "", header(r, "ce_fromcity"))
        for r in records
        if header(r, "ce_subject") == case_id
    ]


async def result_of(http: httpx.AsyncClient, case_id: str, status: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        answer = await http.get(f"{DELIVERY}/v1/results/{case_id}")
        if answer.status_code == 200 and answer.json()["status"] == status:
            body: dict[str, Any] = answer.json()
            return body
        return None

    found: dict[str, Any] = await eventually(
        reached, timeout=PARTNER_TIMEOUT_S, interval=0.3, what=f"{case_id}'s result {status}"
    )
    return found


async def test_the_origin_holds_the_partners_result_at_its_office_and_hands_it_over(
    catalog: dict[str, Any], http: ActingClient, rng: random.Random, settings: CommonSettings
) -> None:
    await ensure_topics(settings, [TopicSpec(MIRRORED)])
    city = catalog["city"]["code"]
    _item, office, application = counter_application(
        catalog, rng, office_kind="district_center", instant=False
    )
    case_id = f"{city}-XR-{uuid.uuid4().hex[:10].upper()}"
    now = datetime.now(UTC)
    # As routing publishes it (rule R2-cross-region), for the application taken here.
    routed = cross_region_route(make_routed(intake_office=office), PARTNER).model_copy(
        update={"case_id": case_id, "application": application, "submitted_at": now}
    )
    await produce(settings, ROUTING_TOPIC, [record(routed, source="/tongban/routing")])
    document = ResultDocument(kind="licence", license_id="EL-LZ-1", sha256="ab" * 32, title="证")
    issued = CaseResultIssued(case_id=case_id, result=document, issued_at=now)
    partner_record = record(issued, source="/tongban/delivery", tocity=city, fromcity=PARTNER)
    await produce(settings, MIRRORED, [partner_record, partner_record])  # relayed twice

    held = await result_of(http, case_id, "result_issued")
    assert (held["pickup_office"], held["delivery_method"]) == (office, "counter_pickup")
    assert held["result"]["license_id"] == "EL-LZ-1"
    # Approval took nothing: no acceptance, no case to read there.
    answer = await http.get(f"{APPROVAL}/v1/cases/{case_id}")
    assert answer.status_code == 404, answer.text

    clerk = http.headers_for(Role.clerk, office)
    picked = await http.post(
        f"{DELIVERY}/v1/cases/{case_id}/pickup", json={"office_code": office}, headers=clerk
    )
    assert picked.status_code == 200, picked.text
    assert picked.json()["status"] == "closed"
    events = of_case(await read_topic(settings, DELIVERY_TOPIC, min_records=2), case_id)
    assert events == [("gov.case.delivered.v1", None), ("gov.case.closed.v1", None)]
    approval_events = of_case(await read_topic(settings, "case.approval.v1"), case_id)
    assert approval_events == [], "approval accepts nothing the partner decides"


async def test_the_handler_refuses_its_own_pickup_and_ends_with_the_origins(
    catalog: dict[str, Any], http: ActingClient, rng: random.Random, settings: CommonSettings
) -> None:
    _item, _center, application = counter_application(
        catalog, rng, office_kind="municipal_center", instant=True
    )
    case_id = f"{PARTNER}-XR-{uuid.uuid4().hex[:10].upper()}"
    now = datetime.now(UTC)
    adopted = CaseSubmitted(
        case_id=case_id,
        application=application,
        submitted_at=now,
        origin=CrossRegionOrigin(
            city_code=PARTNER, office_code=PARTNER_OFFICE, catalog_version=1, forwarded_at=now
        ),
    )
    await produce(settings, INTAKE_TOPIC, [record(adopted, source="/tongban/intake")])

    held = await result_of(http, case_id, "result_issued")
    assert held["pickup_office"] == PARTNER_OFFICE
    refused = await http.post(f"{DELIVERY}/v1/cases/{case_id}/pickup", json={})
    assert refused.status_code == 409, refused.text
    problem = refused.json()
    assert problem["code"] == "pickup_at_origin" and PARTNER_OFFICE in problem["detail"]

    at = datetime.now(UTC)
    imported = [
        CaseDelivered(
            case_id=case_id,
            method=DeliveryMethod.counter_pickup,
            delivered_at=at,
            office_code=PARTNER_OFFICE,
        ),
        CaseClosed(case_id=case_id, outcome="approved", closed_at=at),
    ]
    await produce(
        settings,
        DELIVERY_TOPIC,
        [record(e, source="/tongban/delivery", fromcity=PARTNER) for e in imported],
    )
    closed = await result_of(http, case_id, "closed")
    assert closed["delivered_at"] is not None and closed["closed_at"] is not None
    events = of_case(await read_topic(settings, DELIVERY_TOPIC, min_records=3), case_id)
    assert events == [
        ("gov.case.result_issued.v1", None),
        ("gov.case.delivered.v1", PARTNER),
        ("gov.case.closed.v1", PARTNER),
    ], "no delivered or closed of this region's own"
