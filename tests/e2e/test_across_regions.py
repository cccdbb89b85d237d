"""Cases across regions (跨省通办, DESIGN.md §9) end to end on two real regions.

Region 1 is the e2e session's own (云州, the demo catalog, its four services); region 2 (澜州,
deploy/demo/partner-catalog.yaml) is started once for this module with its own Kafka,
PostgreSQL and four services, and real MirrorMaker 2 links the two both ways
(tests/two_regions.py). Everything is checked through the services' REST views and the
records on the brokers: a case each way ends `closed` in both regions with the partner route
and the result handed over at the origin counter; a city-scope item of the partner is refused
at the counter; a handover the handler cannot verify is flagged there and fails routing at
the origin (a forged forwarded record is flagged and adopts nothing);
and cases submitted while the link is down arrive once it is back, none lost, none doubled.
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from contracts.common import Application
from contracts.events import FROM_CITY_HEADER, TO_CITY_HEADER, XREGION_TOPIC
from services.cli.federation import (
    Clients,
    CrossCase,
    Region,
    city_items,
    cross_region_application,
    cross_region_items,
    submit,
    view,
)
from services.common.envelope import Envelope
from services.common.handover import (
    HandoverSettings,
    derive_dev_key,
    handover_digest,
    key_id_for,
)
from services.common.settings import CommonSettings
from services.operators.catalog_file import load_catalog_file
from tests.conftest import eventually
from tests.e2e.conftest import DEMO_CATALOG
from tests.kafka_helpers import produce
from tests.two_regions import PARTNER_CATALOG, SecondRegion, linked_regions

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@dataclass
class TwoRegions:
    yz: Region
    lz: Region
    second: SecondRegion
    clients: Clients

    def ways(self, direction: str) -> tuple[Region, Region]:
        """(origin, handler) of a direction written `origin->handler` in city codes."""
        by_city = {self.yz.city: self.yz, self.lz.city: self.lz}
        origin, handler = direction.split("->")
        return by_city[origin], by_city[handler]


@pytest.fixture(scope="module")
async def regions(catalog: dict[str, Any]) -> AsyncIterator[TwoRegions]:
    """Region 2 and the link, up once for the module beside the session's region 1 (whose
    services and catalog the `catalog` fixture provides), and each region's intake listing
    the other's cross_region items (its copy of the mirrored catalog)."""
    second = SecondRegion.beside_the_suite()
    catalogs = [load_catalog_file(f) for f in (DEMO_CATALOG, PARTNER_CATALOG)]
    trust = trusted_offices(second.run_dir.parent / "trust", *catalogs)
    async with linked_regions(second, {"TONGBAN_HANDOVER_TRUST_DIR": str(trust)}) as linked:
        yz, lz, clients = linked
        yield TwoRegions(yz, lz, second, clients)


def untrusted_office(yz: dict[str, Any]) -> str:
    """The 云州 office whose key 澜州 is not given: its handovers cannot be verified there,
    as a forged one could not (the last street center; the tests' others take the first)."""
    return str([o["code"] for o in yz["offices"] if o["kind"] == "street_center"][-1])


def trusted_offices(directory: Path, yz: dict[str, Any], lz: dict[str, Any]) -> Path:
    """Region 2's TONGBAN_HANDOVER_TRUST_DIR (production's way of naming partner keys): the
    public key of every office of both cities (the dev keys, derived from the shared seed)
    but `untrusted_office`."""
    seed = HandoverSettings().handover_dev_seed.get_secret_value()
    directory.mkdir(parents=True, exist_ok=True)
    for catalog in (yz, lz):
        for office in catalog["offices"]:
            path = directory / f"{office['code']}.pub"
            path.unlink(missing_ok=True)
            if office["code"] == untrusted_office(yz):
                continue
            public = derive_dev_key(seed, office["code"]).public_key()
            path.write_bytes(public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return directory


async def status_in(
    two: TwoRegions, region: Region, case_id: str, *statuses: str, timeout: float = 90
) -> dict[str, Any]:
    """The case as `region`'s intake shows it, once its status is one of `statuses`."""

    async def reached() -> dict[str, Any] | None:
        shown = await view(two.clients.of(region), region, case_id)
        return shown if shown.get("status") in statuses else None

    found: dict[str, Any] = await eventually(
        reached, timeout=timeout, interval=0.3, what=f"{case_id} {statuses} in {region.city}"
    )
    return found


def decided_item(handler: Region) -> dict[str, Any]:
    """A cross_region item of the handler that a department decides (not instant)."""
    return next(i for i in cross_region_items(handler.catalog) if not i.get("instant"))


def events_of(shown: dict[str, Any]) -> Counter[tuple[str, str]]:
    return Counter((e["type"], e["source"]) for e in shown.get("timeline", []))


@pytest.mark.parametrize("direction", ["YZ->LZ", "LZ->YZ"])
async def test_a_case_across_regions_closes_in_both_with_the_partner_route_and_origin_pickup(
    regions: TwoRegions, direction: str
) -> None:
    origin, handler = regions.ways(direction)
    item = decided_item(handler)
    body = cross_region_application(
        origin.catalog, handler.catalog, item, random.Random(direction), delivery="counter_pickup"
    )
    case = CrossCase(origin=origin, handler=handler, item=item, body=body)
    answer = await submit(regions.clients, case)
    assert answer.status_code == 201, answer.text

    # The handling region adopts it under the same id and routes it by its own rules.
    adopted = await status_in(regions, handler, case.case_id, "accepted")
    handler_route = adopted["route"]
    assert handler_route["path"] != "cross_region"
    assert handler_route["handled_by"] in {d["code"] for d in handler.catalog["departments"]}
    decision = await regions.clients.of(handler).post(
        f"{handler.url('approval')}/v1/cases/{case.case_id}/decisions",
        json={"department": handler_route["handled_by"], "decision": "approve", "reason": "齐全"},
    )
    assert decision.status_code == 200, decision.text

    # The result comes back to the origin office; the handler refuses its own pickup.
    issued = await status_in(regions, origin, case.case_id, "result_issued")
    assert issued["route"]["path"] == "cross_region"
    assert issued["route"]["level"] == "partner"
    assert issued["route"]["handled_by"] == handler.city
    at_handler = await regions.clients.of(handler).post(
        f"{handler.url('delivery')}/v1/cases/{case.case_id}/pickup", json={}
    )
    assert at_handler.status_code == 409, at_handler.text
    assert at_handler.json()["code"] == "pickup_at_origin"
    # The origin's delivery holds it at the origin office once the relayed result_issued is
    # there (its own consumer: intake's view may show result_issued a moment earlier).
    result = await eventually(
        held_at(regions, origin, case.case_id), timeout=60, what=f"{case.case_id} held at origin"
    )
    assert result["pickup_office"] == body["office_code"]
    picked = await regions.clients.of(origin).post(
        f"{origin.url('delivery')}/v1/cases/{case.case_id}/pickup", json={}
    )
    assert picked.status_code == 200, picked.text

    at_origin = await status_in(regions, origin, case.case_id, "closed")
    at_handling = await status_in(regions, handler, case.case_id, "closed")
    # The origin shows the whole story: the handler's steps (source prefixed with its city)
    # and its own pickup; the handler shows the origin's pickup it imported.
    origin_events = events_of(at_origin)
    from_handler = {t for (t, s) in origin_events if s.startswith(f"{handler.city}:")}
    assert {"gov.case.accepted.v1", "gov.case.approved.v1", "gov.case.result_issued.v1"} <= (
        from_handler
    )
    assert {"gov.case.delivered.v1", "gov.case.closed.v1"} <= {t for t, _ in events_of(at_handling)}
    for shown in (at_origin, at_handling):
        assert max(events_of(shown).values()) == 1, shown["timeline"]


async def test_a_city_item_of_the_partner_is_refused_at_the_counter_with_guidance(
    regions: TwoRegions,
) -> None:
    origin, handler = regions.yz, regions.lz
    item = city_items(handler.catalog)[0]
    body = cross_region_application(
        origin.catalog, handler.catalog, item, random.Random(3), delivery="counter_pickup"
    )
    answer = await submit(regions.clients, CrossCase(origin, handler, item, body))
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert problem["code"] == "not_cross_region"
    assert handler.name in problem["detail"]


async def test_a_handover_the_partner_cannot_verify_is_flagged_there_and_fails_routing_here(
    regions: TwoRegions,
) -> None:
    """A case taken at a 云州 office whose key 澜州 does not hold (its signature is, to 澜州,
    as good as forged): 澜州 refuses to adopt it (handover_invalid, kept for operators) and
    云州's routing puts the case in its triage queue (partner_refused), never lost."""
    origin, handler = regions.yz, regions.lz
    item = cross_region_items(handler.catalog)[0]
    body = cross_region_application(
        origin.catalog, handler.catalog, item, random.Random(5), delivery="postal"
    )
    body["office_code"] = untrusted_office(origin.catalog)
    case = CrossCase(origin=origin, handler=handler, item=item, body=body)
    answer = await submit(regions.clients, case)
    assert answer.status_code == 201, answer.text

    row = await eventually(
        refused_row(regions, handler, case.case_id),
        timeout=90,
        what=f"{case.case_id} flagged in {handler.city}",
    )
    assert row["code"] == "handover_invalid"

    async def in_triage() -> dict[str, Any] | None:
        answer = await regions.clients.of(origin).get(f"{origin.url('routing')}/v1/triage")
        assert answer.status_code == 200, answer.text
        entries: list[dict[str, Any]] = answer.json()
        return next((e for e in entries if e["case_id"] == case.case_id), None)

    entry = await eventually(in_triage, timeout=90, what=f"{case.case_id} in {origin.city} triage")
    assert entry["failure"]["code"] == "partner_refused"
    assert entry["rule"] == "R2-cross-region"
    assert await view(regions.clients.of(handler), handler, case.case_id) == {}  # not adopted


async def test_a_forged_forwarded_case_is_flagged_and_never_adopted(regions: TwoRegions) -> None:
    """A gov.case.forwarded.v1 on 云州's xregion.out.v1 (so it crosses the real link) whose
    handover was signed with a key that is not the office's: 澜州 flags it and adopts
    nothing."""
    origin, handler = regions.yz, regions.lz
    item = cross_region_items(handler.catalog)[0]
    body = cross_region_application(
        origin.catalog, handler.catalog, item, random.Random(9), delivery="postal"
    )
    application = Application.model_validate(body)
    case_id = f"forged-{random.getrandbits(40):010x}"
    office = body["office_code"]
    now = datetime.now(UTC)
    forger = derive_dev_key("not the dev seed", office)
    digest = handover_digest(
        case_id=case_id, application=application, office_code=office, signed_at=now
    )
    forwarded = Envelope(
        type="gov.case.forwarded.v1",
        source="/tongban/routing",
        subject=case_id,
        tocity=handler.city,
        fromcity=origin.city,
        data={
            "case_id": case_id,
            "from_city": origin.city,
            "to_city": handler.city,
            "item_code": item["code"],
            "catalog_version": 1,
            "application": application.model_dump(mode="json", exclude_none=True),
            "submitted_at": now.isoformat(),
            "handover": {
                "office_code": office,
                "signed_at": now.isoformat(),
                "digest": digest,
                "algorithm": "ed25519",
                "key_id": key_id_for(office, forger.public_key()),
                "signature": base64.b64encode(forger.sign(bytes.fromhex(digest))).decode(),
            },
            "forwarded_at": now.isoformat(),
        },
    )
    key, value, headers = forwarded.to_record()
    assert (TO_CITY_HEADER, handler.city.encode()) in headers
    assert (FROM_CITY_HEADER, origin.city.encode()) in headers
    await produce(CommonSettings(), XREGION_TOPIC, [(key, value, headers)])

    row = await eventually(
        refused_row(regions, handler, case_id), timeout=90, what=f"{case_id} flagged"
    )
    assert row["code"] == "handover_invalid"
    assert await view(regions.clients.of(handler), handler, case_id) == {}


def held_at(
    two: TwoRegions, region: Region, case_id: str
) -> Callable[[], Awaitable[dict[str, Any] | None]]:
    """A poll: the result `region`'s delivery holds for the case (None: not yet)."""

    async def result() -> dict[str, Any] | None:
        answer = await two.clients.of(region).get(f"{region.url('delivery')}/v1/results/{case_id}")
        return answer.json() if answer.status_code == 200 else None

    return result


def refused_row(
    two: TwoRegions, region: Region, case_id: str
) -> Callable[[], Awaitable[dict[str, Any] | None]]:
    """A poll: the operators' row of a forwarded case `region` refused to adopt."""

    async def row() -> dict[str, Any] | None:
        answer = await two.clients.of(region).get(f"{region.url('intake')}/v1/xregion/refused")
        assert answer.status_code == 200, answer.text
        rows: list[dict[str, Any]] = answer.json()
        return next((r for r in rows if r["case_id"] == case_id), None)

    return row


async def test_cases_sent_while_the_link_is_down_arrive_once_it_is_back(
    regions: TwoRegions,
) -> None:
    """MirrorMaker stopped, cases submitted both ways meanwhile (forwarded at the origin, not
    adopted anywhere), MirrorMaker started again: every case closes in both regions' views,
    each of its events exactly once in each."""
    rng = random.Random(11)
    cases: list[CrossCase] = []
    await asyncio.to_thread(regions.second.link, "down")
    try:
        for origin, handler in ((regions.yz, regions.lz), (regions.lz, regions.yz)):
            instant = [i for i in cross_region_items(handler.catalog) if i.get("instant")]
            for item in instant[:2]:
                body = cross_region_application(
                    origin.catalog, handler.catalog, item, rng, delivery="postal"
                )
                case = CrossCase(origin=origin, handler=handler, item=item, body=body)
                answer = await submit(regions.clients, case)
                assert answer.status_code == 201, answer.text
                cases.append(case)
        for case in cases:
            shown = await eventually(
                _routed_across(regions, case),
                timeout=60,
                what=f"{case.case_id} forwarded at {case.origin.city}",
            )
            assert shown["status"] != "closed"
            assert await view(regions.clients.of(case.handler), case.handler, case.case_id) == {}
    finally:
        await asyncio.to_thread(regions.second.link, "up")
    for case in cases:
        at_origin = await status_in(regions, case.origin, case.case_id, "closed", timeout=120)
        at_handling = await status_in(regions, case.handler, case.case_id, "closed", timeout=120)
        for shown in (at_origin, at_handling):
            counts = events_of(shown)
            assert max(counts.values()) == 1, shown["timeline"]
            assert sum(n for (t, _), n in counts.items() if t == "gov.case.closed.v1") == 1


def _routed_across(two: TwoRegions, case: CrossCase) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A poll: the origin's view of the case once it shows the partner route (forwarded)."""

    async def shown() -> dict[str, Any]:
        seen = await view(two.clients.of(case.origin), case.origin, case.case_id)
        route = seen.get("route") or {}
        if route.get("path") == "cross_region" and route.get("handled_by") == case.handler.city:
            return seen
        return {}

    return shown
