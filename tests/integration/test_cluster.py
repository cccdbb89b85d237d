"""Three-broker mode (KAFKA_BROKERS=3): replication factor 3, min.insync.replicas 2."""

from __future__ import annotations

import asyncio
import os

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.common.db import unit_of_work
from services.common.envelope import Envelope
from services.common.kafka import TopicSpec, ensure_topics
from services.common.outbox import Outbox, OutboxRelay
from services.common.settings import CommonSettings
from tests.conftest import eventually, unique
from tests.kafka_helpers import header, read_topic

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster_settings(settings: CommonSettings) -> CommonSettings:
    brokers = int(os.environ.get("TONGBAN_KAFKA_BROKERS", "1"))
    if brokers < 3:
        pytest.fail("cluster tests need the three-broker stack: KAFKA_BROKERS=3 make up")
    return settings.model_copy(update={"kafka_replication": 3, "kafka_min_insync": 2})


async def test_three_brokers_serve_a_replicated_topic_end_to_end(
    cluster_settings: CommonSettings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    schema: str,
) -> None:
    settings = cluster_settings
    topic = unique("replicated")
    assert await ensure_topics(settings, [TopicSpec(topic, partitions=6)]) == [topic]
    assert await ensure_topics(settings, [TopicSpec(topic, partitions=6)]) == []  # idempotent

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        assert len(cluster["brokers"]) == 3
        (described,) = await admin.describe_topics([topic])
        partitions = described["partitions"]
        assert len(partitions) == 6
        assert all(len(p["replicas"]) == 3 and len(p["isr"]) == 3 for p in partitions)
        (configs,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        entries = {c[0]: c[1] for c in configs.resources[0][4]}
        assert entries["min.insync.replicas"] == "2"
    finally:
        await admin.close()

    events = [
        Envelope(type="gov.test.replicated.v1", source="/tongban/test", subject=f"HC-{i}", data={})
        for i in range(60)
    ]
    async with unit_of_work(sessions) as session:
        await Outbox(schema).add_many(session, [(topic, e) for e in events])
    relay = OutboxRelay(settings, schema=schema)
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: relay.published == len(events), what="60 events acked by ISR")
    finally:
        relay.stop()
        await task
    records = await read_topic(settings, topic, min_records=len(events))
    assert sorted(header(r, "ce_id") or "" for r in records) == sorted(e.id for e in events)
