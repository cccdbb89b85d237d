"""`tongban tail` and `tongban lag` on the three-broker cluster (KAFKA_BROKERS=3): partitions
led by different brokers, reached from the bootstrap list of the settings."""

from __future__ import annotations

import json
import os

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.common.kafka import TopicSpec, ensure_topics
from services.common.settings import CommonSettings
from tests.conftest import unique
from tests.integration.test_ops_cli import event, json_lines, now_ms, produce_placed, run

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster_settings(settings: CommonSettings) -> CommonSettings:
    brokers = int(os.environ.get("TONGBAN_KAFKA_BROKERS", "1"))
    if brokers < 3:
        pytest.fail("cluster tests need the three-broker stack: KAFKA_BROKERS=3 make up")
    return settings.model_copy(update={"kafka_replication": 3, "kafka_min_insync": 2})


async def test_tail_and_lag_on_three_brokers(cluster_settings: CommonSettings) -> None:
    settings = cluster_settings
    assert len(settings.bootstrap_servers) == 3
    topic = unique("ops_cluster")
    await ensure_topics(settings, [TopicSpec(topic, partitions=6)])
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        leaders = {p["leader"] for p in described["partitions"]}
    finally:
        await admin.close()
    assert len(leaders) > 1, "the partitions should be spread over the brokers"

    base = now_ms() - 10_000
    records = []
    for i in range(18):
        key, value, headers = event("gov.case.routed.v1", f"T-CL-{i:02d}", {"seq": i})
        records.append((i % 6, base + i * 20, key, value, headers))
    # Partition by partition: what arrives first is not what happened first.
    await produce_placed(settings, topic, sorted(records, key=lambda r: (-r[0], r[1])))

    bootstrap = ",".join(settings.bootstrap_servers)
    tail = await run(
        "tail",
        "-t",
        topic,
        "--from-beginning",
        "--max",
        "18",
        "--json",
        TONGBAN_KAFKA_BOOTSTRAP=bootstrap,
    )
    lines = json_lines(tail)
    assert [x["data"]["seq"] for x in lines] == list(range(18))
    assert {x["partition"] for x in lines} == set(range(6))

    group = unique("ops_cluster_group")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(6)]
        consumer.assign(partitions)
        await consumer.commit(dict.fromkeys(partitions, 1))  # 1 of the 3 records of each
    finally:
        await consumer.stop()
    result = await run("lag", "--group", group, "--json", TONGBAN_KAFKA_BOOTSTRAP=bootstrap)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["total_lag"] == 12
    assert sorted((r["partition"], r["lag"]) for r in body["partitions"]) == [
        (p, 2) for p in range(6)
    ]

    # A tail still follows with one broker's address only: the others are discovered.
    one = settings.bootstrap_servers[1]
    single = await run(
        "tail",
        "-t",
        topic,
        "--from-offset",
        "2",
        "--json",
        "--timeout",
        "1.5",
        TONGBAN_KAFKA_BOOTSTRAP=one,
    )
    assert sorted(x["data"]["seq"] for x in json_lines(single)) == list(range(12, 18))
