"""routing across regions (DESIGN.md §9) on the real broker and database, with a partner region
simulated the way MirrorMaker 2 makes it here: its catalog on `region8.catalog.v1` (a
CatalogPublished record, as its routing publishes it on its own catalog.v1) and its records
for us on `region8.xregion.out.v1`.

This region is the unit tests' city T (its catalog applied to the process's copy, not loaded
into the stack's routing, whose catalog in force other tests rely on); the partner is their
city P. A case of a P applicant taken at a T counter is routed cross_region and forwarded; its
later local steps go to P unchanged; an adopted case's events go to its origin; P's refusal
puts the case in triage, and a retry forwards it again. Records go through routing's real
outbox and relay to the real xregion.out.v1. The relay group reads a topic of this test's own
standing in for the case topics (the stack's routing, when it runs, relays from the real ones
too, and must not see these), and every group has a name of this test's own.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from sqlalchemy import delete, select, text

from contracts.common import CrossRegionOrigin, Handover
from contracts.events import (
    CASE_TOPICS,
    EVENT_TYPES,
    ROUTING_TOPIC,
    XREGION_TOPIC,
    CaseAccepted,
    CaseAdoptionRefused,
    CaseSubmitted,
    CaseWithdrawn,
    CatalogPublished,
    Event,
)
from services.common import migrations
from services.common.catalog_follower import CatalogFollower
from services.common.consumer import ConsumerRunner, Subscription
from services.common.db import driver_connection, unit_of_work
from services.common.department_topics import DepartmentTopics
from services.common.envelope import Envelope
from services.common.kafka import TopicSpec, ensure_topics
from services.common.partner_catalogs import PartnerCatalogs
from services.common.service import ServiceRuntime, ServiceSettings
from services.routing import api, handlers, models
from tests.auth_helpers import auth_headers
from tests.conftest import MakeTopic, eventually, unique
from tests.kafka_helpers import header, read_topic
from tests.unit.catalog_data import application, base_catalog, catalog, partner_catalog

pytestmark = pytest.mark.integration

ALIAS = "region8"
OWN, PARTNER = "T", "P"
PARTNER_VERSION = 3
LOADED = datetime(2026, 1, 1, tzinfo=UTC)


def published(raw: dict[str, Any], version: int) -> CatalogPublished:
    return CatalogPublished(
        version=version, loaded_at=LOADED, catalog=catalog(raw).model_dump(mode="json")
    )


async def send(
    settings: ServiceSettings, topic: str, envelopes: Sequence[Envelope], partition: int = 0
) -> None:
    """The records in this order, to one partition (one order for the consumer to see)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for envelope in envelopes:
            key, value, headers = envelope.to_record()
            await producer.send_and_wait(
                topic, value=value, key=key, headers=headers, partition=partition
            )
    finally:
        await producer.stop()


@dataclass
class Region:
    """Region T's routing parts as app.py wires them, with this test's group names."""

    routing: handlers.Routing
    settings: ServiceSettings
    case_topic: str  # standing in for the case topics
    relay_group: str
    prefix: str

    @property
    def runtime(self) -> ServiceRuntime:
        return self.routing.runtime

    def case_id(self) -> str:
        return f"{self.prefix}{uuid.uuid4().hex[:10].upper()}"

    def envelope(self, payload: Event, *, source: str, **kwargs: Any) -> Envelope:
        """The event as the service at `source` publishes it."""
        return replace(self.runtime.envelope(payload, **kwargs)[1], source=source)

    def accepted(self, case_id: str) -> Envelope:
        now = self.runtime.clock.now()
        accepted = CaseAccepted(
            case_id=case_id, department="M-HOU", accepted_at=now, deadline=None, time_limit_days=5
        )
        return self.envelope(accepted, source="/tongban/approval", handledby="M-HOU")

    def withdrawn(self, case_id: str, *, fromcity: str | None = None) -> Envelope:
        """Withdrawn at this region's counter, or imported from `fromcity`."""
        withdrawn = CaseWithdrawn(case_id=case_id, withdrawn_at=self.runtime.clock.now())
        return self.envelope(withdrawn, source="/tongban/intake", fromcity=fromcity)

    async def submit(self, case_id: str, *, item: str = "XR-E") -> CaseSubmitted:
        """A T counter takes the case of a P applicant; routing routes it (its handler)."""
        submitted = CaseSubmitted(
            case_id=case_id,
            application=application(item, office="T12-SC", division="P11"),
            submitted_at=self.runtime.clock.now(),
            handover=Handover(
                office_code="T12-SC",
                signed_at=self.runtime.clock.now(),
                digest="d" * 64,
                algorithm="ed25519",
                key_id="T12-SC-it",
                signature="c2lnbmF0dXJl",
            ),
        )
        envelope = self.envelope(submitted, source="/tongban/intake")
        async with unit_of_work(self.runtime.sessions) as session:
            await handlers.route_submission(session, envelope, submitted, routing=self.routing)
        return submitted

    async def route_row(self, case_id: str) -> Any:
        routes = models.routes
        async with self.runtime.sessions() as session:
            return (
                await session.execute(select(routes).where(routes.c.case_id == case_id))
            ).one_or_none()

    async def partner_case(self, case_id: str) -> Any:
        table = models.cross_region_cases
        async with self.runtime.sessions() as session:
            return (
                await session.execute(select(table).where(table.c.case_id == case_id))
            ).one_or_none()


@pytest.fixture
async def region(settings: ServiceSettings, make_topic: MakeTopic) -> AsyncIterator[Region]:
    await asyncio.to_thread(migrations.upgrade, "routing", settings.migration_url)
    dlq = await make_topic("xr-dlq")
    own = settings.model_copy(update={"service": "routing", "outbox_poll_s": 0.2, "dlq_topic": dlq})
    runtime = ServiceRuntime(own)
    catalogs: handlers.Catalogs = CatalogFollower(own, handlers.build_index)
    catalogs.apply(published(base_catalog(), 1))
    city = partial(handlers.own_city, catalogs)

    # The partner's catalog, mirrored: compacted, one partition, as catalog.v1.
    mirrored = f"{ALIAS}.catalog.v1"
    await ensure_topics(
        own, [TopicSpec(mirrored, partitions=1, config={"cleanup.policy": "compact"})]
    )
    await ensure_topics(own, [TopicSpec(f"{ALIAS}.{XREGION_TOPIC}")])
    partner = published(partner_catalog(), PARTNER_VERSION)
    await send(
        own, mirrored, [runtime.envelope(partner, subject=f"P/catalog/{PARTNER_VERSION}")[1]]
    )
    partners: handlers.Partners = PartnerCatalogs(own, handlers.build_index, own_city=city)
    await partners.start()
    assert PARTNER in partners.partners(), "the partner's catalog is followed"

    routing = handlers.Routing(
        runtime=runtime,
        catalogs=catalogs,
        topics=DepartmentTopics(own),
        partners=partners,
    )
    case_topic = await make_topic("xr-cases")
    relay = partial(handlers.relay_case_event, routing=routing)
    relay_group = unique("routing-xregion-it")
    runners = [
        ConsumerRunner(
            own,
            name=relay_group,
            topics=[case_topic],
            subscriptions={
                t: Subscription(relay, e.model)
                for t, e in EVENT_TYPES.items()
                if e.topic in CASE_TOPICS
            },
            sessions=runtime.sessions,
            schema="routing",
            ignored_types=(),
            batch_handler=partial(handlers.relay_case_events, routing=routing),
            relevant=handlers.concern_partners,
        ),
        runtime.consume_partners(
            name=unique("routing-partners-it"),
            subscriptions={CaseAdoptionRefused: partial(handlers.partner_refused, routing=routing)},
            own_city=city,
        ),
    ]
    tasks = [
        asyncio.create_task(partners.run()),
        asyncio.create_task(runtime.relay.run()),
        *(asyncio.create_task(r.run()) for r in runners),
    ]
    prefix = f"T-XR-{uuid.uuid4().hex[:6].upper()}-"
    try:
        for runner in runners:
            await asyncio.wait_for(runner.ready.wait(), 30)
        yield Region(routing, own, case_topic, relay_group, prefix)
    finally:
        partners.stop()
        runtime.relay.stop()
        for runner in runners:
            runner.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        async with unit_of_work(runtime.sessions) as session:
            for table in (models.routes, models.cross_region_cases):
                await session.execute(delete(table).where(table.c.case_id.startswith(prefix)))
        await runtime.engine.dispose()


async def on_topic(
    region: Region, topic: str, *, subject: str, count: int = 1
) -> list[ConsumerRecord[bytes, bytes]]:
    """The records of `topic` about `subject`, once there are `count` of them."""
    found: list[ConsumerRecord[bytes, bytes]] = []

    async def arrived() -> bool:
        records = await read_topic(region.settings, topic, timeout=5.0, idle=0.3)
        found[:] = [r for r in records if r.key == subject.encode()]
        return len(found) >= count

    await eventually(arrived, timeout=40, interval=0.5, what=f"{count} on {topic} for {subject}")
    return found


def data(record: ConsumerRecord[bytes, bytes]) -> Any:
    assert record.value is not None
    return json.loads(record.value)


# --------------------------------------------------------------------------- forwarding


async def test_a_partner_applicants_case_is_routed_cross_region_and_forwarded(
    region: Region,
) -> None:
    case_id = region.case_id()
    submitted = await region.submit(case_id)

    row = await region.route_row(case_id)
    assert row.status == "routed" and row.rule == "R2-cross-region"
    assert (row.route["path"], row.route["level"], row.route["handled_by"]) == (
        "cross_region",
        "partner",
        PARTNER,
    )
    assert row.catalog_version == PARTNER_VERSION
    partner_case = await region.partner_case(case_id)
    assert (partner_case.partner_city, partner_case.role) == (PARTNER, "origin")

    (forwarded,) = await on_topic(region, XREGION_TOPIC, subject=case_id)
    assert header(forwarded, "ce_type") == "gov.case.forwarded.v1"
    assert (header(forwarded, "ce_tocity"), header(forwarded, "ce_fromcity")) == (PARTNER, OWN)
    body = data(forwarded)
    assert (body["from_city"], body["to_city"], body["item_code"]) == (OWN, PARTNER, "XR-E")
    assert body["catalog_version"] == PARTNER_VERSION
    assert body["application"] == submitted.application.model_dump(mode="json")
    assert submitted.handover is not None
    assert body["handover"] == submitted.handover.model_dump(mode="json")

    (routed,) = await on_topic(region, ROUTING_TOPIC, subject=case_id)
    assert header(routed, "ce_type") == "gov.case.routed.v1"
    assert header(routed, "ce_handledby") == PARTNER and header(routed, "ce_tocity") is None

    # The preview answers the same route (ASGITransport: no lifespan, nothing else starts).
    app = region.runtime.create_app(
        title="routing", description="", routers=[api.router], service=region.routing
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://routing",
        headers=auth_headers("operator"),
    ) as client:
        preview = await client.post(
            "/v1/routes/preview", json=submitted.application.model_dump(mode="json")
        )
    assert preview.status_code == 200, preview.text
    answer = preview.json()
    assert answer["rule"] == "R2-cross-region" and answer["failure"] is None
    assert (answer["route"]["path"], answer["route"]["handled_by"]) == ("cross_region", PARTNER)
    assert answer["route"]["catalog_version"] == PARTNER_VERSION


# --------------------------------------------------------------------------- relaying


async def test_the_origins_later_steps_are_relayed_unchanged_and_nothing_from_the_partner(
    region: Region,
) -> None:
    case_id = region.case_id()
    await region.submit(case_id)
    imported = region.withdrawn(case_id, fromcity=PARTNER)
    accepted = region.accepted(case_id)
    withdrawn = region.withdrawn(case_id)
    # one partition, in this order: the withdrawn (relayed) is applied after the two others
    await send(region.settings, region.case_topic, [imported, accepted, withdrawn])

    records = await on_topic(region, XREGION_TOPIC, subject=case_id, count=2)
    by_id = {header(r, "ce_id"): r for r in records}
    assert withdrawn.id in by_id and imported.id not in by_id and accepted.id not in by_id
    relayed = by_id[withdrawn.id]
    assert (header(relayed, "ce_tocity"), header(relayed, "ce_fromcity")) == (PARTNER, OWN)
    _key, value, headers = withdrawn.to_record()
    original = {name: raw.decode() for name, raw in headers}
    for name in ("ce_id", "ce_type", "ce_source", "ce_subject", "ce_time"):
        assert header(relayed, name) == original[name], name
    assert relayed.value == value  # the same data, unchanged


async def test_a_case_of_this_region_alone_passes_the_relay_group_without_an_inbox_row(
    region: Region,
) -> None:
    """Every case event of the region passes routing-xregion; those of cases of this region
    alone (nearly all) are passed over with no inbox row (`concern_partners`), and their
    payloads unvalidated, while a relayed event keeps its row, as every applied event does.
    A malformed event of a case across regions is dead-lettered; one of a case of this
    region alone is the business of the readers that apply it, not the relay's."""
    local_id, cross_id = region.case_id(), region.case_id()
    await region.submit(cross_id)
    local, relayed = region.withdrawn(local_id), region.withdrawn(cross_id)
    local_bad, cross_bad = (
        replace(region.withdrawn(case_id), data={"case_id": case_id})  # no withdrawn_at
        for case_id in (local_id, cross_id)
    )
    # One partition, in this order.
    await send(region.settings, region.case_topic, [local, relayed, local_bad, cross_bad])

    records = await on_topic(region, XREGION_TOPIC, subject=cross_id, count=2)
    assert relayed.id in {header(r, "ce_id") for r in records}
    # The partner readers dead-letter there too (what other tests left on partner topics):
    # only this test's cases count.
    letters: list[ConsumerRecord[bytes, bytes]] = []

    async def lettered() -> bool:
        records = await read_topic(region.settings, region.settings.dlq_topic, idle=1.0)
        letters[:] = [r for r in records if r.key in (local_id.encode(), cross_id.encode())]
        return bool(letters)

    # A partition's letters go out in offset order: the local case's would be there first.
    await eventually(lettered, timeout=40, interval=0.5, what="the relay's dead letter")
    assert [(r.key, header(r, "ce_id")) for r in letters] == [(cross_id.encode(), cross_bad.id)]
    assert "schema-invalid gov.case.withdrawn.v1" in (header(letters[0], "dlq_reason") or "")
    async with region.runtime.sessions() as session:
        kept = set(
            (
                await session.execute(
                    text("SELECT event_id FROM routing.inbox WHERE consumer = :group"),
                    {"group": region.relay_group},
                )
            ).scalars()
        )
    assert relayed.id in kept and local.id not in kept


async def test_an_adopted_cases_events_go_to_its_origin(region: Region) -> None:
    case_id = region.case_id()
    now = region.runtime.clock.now()
    adopted = region.envelope(
        CaseSubmitted(
            case_id=case_id,
            application=application("ENT-I", office="T-MC", division="T12"),
            submitted_at=now,
            origin=CrossRegionOrigin(
                city_code=PARTNER,
                office_code="P-MC",
                catalog_version=1,
                forwarded_at=now - timedelta(seconds=5),
            ),
        ),
        source="/tongban/intake",
    )
    accepted = region.accepted(case_id)
    imported = region.withdrawn(case_id, fromcity=PARTNER)
    closing = region.withdrawn(case_id)
    await send(region.settings, region.case_topic, [adopted, accepted, imported, closing])

    records = await on_topic(region, XREGION_TOPIC, subject=case_id, count=3)
    ids = [header(r, "ce_id") for r in records]
    assert ids == [adopted.id, accepted.id, closing.id]  # in order, the import left out
    assert {(header(r, "ce_tocity"), header(r, "ce_fromcity")) for r in records} == {(PARTNER, OWN)}
    partner_case = await region.partner_case(case_id)
    assert (partner_case.partner_city, partner_case.role) == (PARTNER, "handler")


async def test_an_adopted_submission_makes_its_cases_later_events_in_the_batch_relevant(
    region: Region,
) -> None:
    """The relay group's filter reads `cross_region_cases` before the batch is applied: an
    adopted case's row is written only as its submission is applied, so its events after the
    submission in the same batch must pass the filter on the submission's word (a burst of
    forwarded cases after a link comes back arrives so)."""
    case_id, local_id = region.case_id(), region.case_id()
    now = region.runtime.clock.now()
    origin = CrossRegionOrigin(
        city_code=PARTNER, office_code="P-MC", catalog_version=1, forwarded_at=now
    )
    submitted = CaseSubmitted(
        case_id=case_id,
        application=application("ENT-I", office="T-MC", division="T12"),
        submitted_at=now,
        origin=origin,
    )
    accepted = region.accepted(case_id)
    local = region.withdrawn(local_id)
    batch = [region.envelope(submitted, source="/tongban/intake"), accepted, local]
    async with region.runtime.sessions() as session:
        driver = await driver_connection(session, transaction=False)
        assert await handlers.concern_partners(driver, batch) == [True, True, False]


# --------------------------------------------------------------------------- refusals


async def test_a_partners_refusal_puts_the_case_in_triage_and_a_retry_forwards_it_again(
    region: Region,
) -> None:
    refused_case, other_case = region.case_id(), region.case_id()
    await region.submit(refused_case)
    await region.submit(other_case)

    def refusal(case_id: str, to_city: str) -> Envelope:
        return region.envelope(
            CaseAdoptionRefused(
                case_id=case_id,
                from_city=PARTNER,
                to_city=to_city,
                code="not_cross_region",
                reason="item XR-E is not cross_region in P",
                refused_at=region.runtime.clock.now(),
            ),
            source="/tongban/intake",
            tocity=to_city,
            fromcity=PARTNER,
        )

    # As MirrorMaker copies P's xregion.out.v1: one for another region first, then ours.
    await send(
        region.settings,
        f"{ALIAS}.{XREGION_TOPIC}",
        [refusal(other_case, "Q"), refusal(refused_case, OWN)],
    )

    async def failed() -> Any:
        row = await region.route_row(refused_case)
        return row if row.status == "route_failed" else None

    row = await eventually(failed, timeout=40, what="the refused case in triage")
    assert row.rule == "R2-cross-region" and row.failure["code"] == "partner_refused"
    assert "not_cross_region" in row.failure["explanation"]
    assert (await region.route_row(other_case)).status == "routed"  # not addressed to us
    route_failed = [
        r
        for r in await on_topic(region, ROUTING_TOPIC, subject=refused_case, count=2)
        if header(r, "ce_type") == "gov.case.route_failed.v1"
    ]
    assert [data(r)["failure"]["code"] for r in route_failed] == ["partner_refused"]

    # An operator retries it from triage: routed and forwarded again, under the same case id.
    async with unit_of_work(region.runtime.sessions) as session:
        outcome = await handlers.retry_route(session, refused_case, routing=region.routing)
    assert outcome.route is not None and outcome.route.rule == "R2-cross-region"
    forwarded = await on_topic(region, XREGION_TOPIC, subject=refused_case, count=2)
    assert [header(r, "ce_type") for r in forwarded] == ["gov.case.forwarded.v1"] * 2
    assert len({header(r, "ce_id") for r in forwarded}) == 2
    assert (await region.route_row(refused_case)).status == "routed"
