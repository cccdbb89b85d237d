"""The console's view of the links to partner regions (DESIGN.md §9), on the real broker.

A partner's mirrored topics are made here the way MirrorMaker 2 makes them (see
deploy/local/mirror.sh and tests/integration/test_mirror.py): `<alias>.heartbeats`,
`<alias>.xregion.out.v1` and `<alias>.catalog.v1`, every record keeping the timestamp it had in
the partner's cluster. The console runs in-process (`create_app` with its lifespan) against
this stack's Kafka and answers `GET /api/links`.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from contracts.events import CATALOG_TOPIC, XREGION_TOPIC, CatalogPublished
from services.common.envelope import Envelope
from services.common.kafka import TopicSpec, ensure_topics
from services.common.settings import CommonSettings
from services.console.app import ConsoleSettings, create_app
from services.console.kafka_views import KafkaViews
from tests.conftest import eventually, unique
from tests.unit.catalog_data import base_catalog, catalog

pytestmark = pytest.mark.integration

STALE_AFTER_S = 30.0


async def mirror(
    settings: CommonSettings,
    alias: str,
    *,
    heartbeats_ago_s: list[float],
    xregion_ago_s: list[float],
) -> None:
    """`alias`'s mirrored topics with records stamped that many seconds ago (a partition each
    for the forwarded records), and the partner's catalog (city T, version 7)."""
    heartbeats = f"{alias}.heartbeats"
    xregion = f"{alias}.{XREGION_TOPIC}"
    catalog_topic = f"{alias}.{CATALOG_TOPIC}"
    await ensure_topics(
        settings,
        [
            TopicSpec(heartbeats, partitions=1, config={"cleanup.policy": "compact"}),
            TopicSpec(xregion, partitions=max(1, len(xregion_ago_s))),
            TopicSpec(catalog_topic, partitions=1, config={"cleanup.policy": "compact"}),
        ],
    )
    now_ms = int(time.time() * 1000)
    raw = base_catalog()
    raw["city"]["name"] = "测试伙伴市"  # the test catalog's city T, as a partner
    published = CatalogPublished(
        version=7,
        loaded_at="2026-06-15T10:00:00+08:00",
        catalog=catalog(raw).model_dump(mode="json"),
    )
    key, value, headers = Envelope(
        type=CatalogPublished.TYPE,
        source="/tongban/routing",
        subject="T/catalog/7",
        data=published.model_dump(mode="json"),
    ).to_record()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for ago in heartbeats_ago_s:
            # MirrorMaker's heartbeat is keyed by its source and target alias: one key here.
            await producer.send_and_wait(
                heartbeats, b"beat", key=b"partner->here", timestamp_ms=now_ms - int(ago * 1000)
            )
        for partition, ago in enumerate(xregion_ago_s):
            await producer.send_and_wait(
                xregion,
                b"{}",
                key=f"case-{partition}".encode(),
                partition=partition,
                timestamp_ms=now_ms - int(ago * 1000),
            )
        await producer.send_and_wait(catalog_topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


async def test_links_show_each_partner_with_the_age_of_its_newest_heartbeat_and_record(
    settings: CommonSettings,
) -> None:
    up, stale, silent = unique("region-up"), unique("region-stale"), unique("region-silent")
    # Out of order on purpose: the newest by timestamp counts, not the last written.
    await mirror(settings, up, heartbeats_ago_s=[60, 4, 20], xregion_ago_s=[300, 45, 120])
    await mirror(settings, stale, heartbeats_ago_s=[95], xregion_ago_s=[])
    await mirror(settings, silent, heartbeats_ago_s=[], xregion_ago_s=[10])
    started = time.monotonic()

    app = create_app(ConsoleSettings(environment="test", link_stale_after_s=STALE_AFTER_S))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:

            async def rows_with_partners() -> dict[str, dict[str, Any]] | None:
                body = (await client.get("/api/links")).json()
                assert body["available"], body
                rows = {r["alias"]: r for r in body["rows"] if r["alias"] in (up, stale, silent)}
                complete = len(rows) == 3 and all(r["partner"] for r in rows.values())
                return rows if complete else None

            rows = await eventually(rows_with_partners, what="three links with their partners")
    elapsed = time.monotonic() - started + 1

    assert rows[up]["partner"] == {"code": "T", "name": "测试伙伴市", "version": 7}
    assert rows[up]["status"] == "up"
    assert 4 <= rows[up]["heartbeat_age_s"] <= 4 + elapsed
    assert rows[up]["xregion_topic"] == f"{up}.xregion.out.v1"
    assert rows[up]["xregion_records"] == 3
    assert 45 <= rows[up]["xregion_newest_age_s"] <= 45 + elapsed

    assert rows[stale]["status"] == "stale" and rows[stale]["heartbeat_age_s"] >= 95
    assert rows[stale]["xregion_records"] == 0 and rows[stale]["xregion_newest_age_s"] is None

    assert rows[silent]["status"] == "no_heartbeat" and rows[silent]["heartbeat_age_s"] is None
    assert 10 <= rows[silent]["xregion_newest_age_s"] <= 10 + elapsed


async def test_the_live_stream_also_reads_what_partners_send_here(settings: CommonSettings) -> None:
    """Every partner's `<alias>.xregion.out.v1` is among the stream reader's partitions (the
    stream then shows what is addressed to this region: tests/unit/test_console.py)."""
    alias = unique("region-stream")
    await mirror(settings, alias, heartbeats_ago_s=[1], xregion_ago_s=[5, 5])
    views = KafkaViews(ConsoleSettings(environment="test"))
    try:
        consumer, count = await views.open_stream(None)
        try:
            assigned = consumer.assignment()
        finally:
            await consumer.stop()
    finally:
        await views.close()
    mirrored = {tp for tp in assigned if tp.topic == f"{alias}.{XREGION_TOPIC}"}
    assert mirrored == {TopicPartition(f"{alias}.{XREGION_TOPIC}", p) for p in (0, 1)}
    assert {tp.topic for tp in assigned} >= {"case.intake.v1", "case.routing.v1"}
    assert count == len(assigned)
    assert not any(tp.topic.endswith((".heartbeats", ".catalog.v1")) for tp in assigned)
