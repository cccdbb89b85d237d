"""The link between regions (DESIGN.md §9): real MirrorMaker 2 (deploy/local/mirror.sh, dedicated
mode) between two real Kafka clusters of this test's own (deploy/local/kafka.sh), both ways.

A record of one region's `xregion.out.v1` or `catalog.v1` arrives on the other region's
`<source alias>.<topic>` with the same key, value, headers (the CloudEvents attributes) and
partition, and `catalog.v1`'s mirror stays compacted. The two clusters listen 100 and 200
ports above the test run's own broker (TONGBAN_MIRROR_TEST_PORT_BASE moves them), so they
clash neither with that stack nor with `make federation` (19092), and they stop at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import ConsumerRecord

from contracts.events import CATALOG_TOPIC
from services.common.kafka import TopicSpec, ensure_topics
from services.common.settings import CommonSettings
from tests.conftest import ROOT
from tests.kafka_helpers import produce, read_topic
from tests.two_regions import single_broker_settings

pytestmark = pytest.mark.integration

LOCAL = ROOT / "deploy" / "local"
XREGION_TOPIC = "xregion.out.v1"  # routing's outbound topic of forwarded cases (issue 17)
ALIASES = ("region1", "region2")
DEADLINE_S = 60.0
MIRRORED_TOPICS = [
    TopicSpec(CATALOG_TOPIC, partitions=1, config={"cleanup.policy": "compact"}),
    TopicSpec(XREGION_TOPIC),
]


@dataclass(frozen=True)
class Region:
    alias: str
    run_dir: Path
    port_base: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port_base}"

    @property
    def settings(self) -> CommonSettings:
        return single_broker_settings(self.bootstrap)


def port_base() -> int:
    """100 above the test run's first broker, unless TONGBAN_MIRROR_TEST_PORT_BASE says."""
    given = os.environ.get("TONGBAN_MIRROR_TEST_PORT_BASE")
    if given:
        return int(given)
    first = os.environ.get("TONGBAN_KAFKA_BOOTSTRAP", "127.0.0.1:9092").split(",")[0]
    return int(first.rsplit(":", 1)[1]) + 100


def script(name: str, command: str, env: dict[str, str]) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if k != "TONGBAN_STACK_LOCK_HELD"}
    return subprocess.Popen(
        ["bash", str(LOCAL / name), command],
        env={**clean, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )


def finish(process: subprocess.Popen[str], what: str) -> None:
    out, _ = process.communicate(timeout=180)
    assert process.returncode == 0, f"{what} failed:\n{out}"


def kafka_env(region: Region) -> dict[str, str]:
    return {
        "TONGBAN_RUN_DIR": str(region.run_dir),
        "TONGBAN_KAFKA_PORT_BASE": str(region.port_base),
        "KAFKA_BROKERS": "1",
        "KAFKA_HEAP": "256m",
    }


@dataclass(frozen=True)
class Link:
    regions: tuple[Region, Region]
    env: dict[str, str]  # mirror.sh's: its run folder, aliases, clusters and topics


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Link]:
    """Two one-broker clusters with the mirrored topics, and MirrorMaker 2 between them."""
    base = port_base()
    root = tmp_path_factory.mktemp("mirror")
    pair = (
        Region(ALIASES[0], root / "region1", base),
        Region(ALIASES[1], root / "region2", base + 100),
    )
    mirror_env = {
        "TONGBAN_RUN_DIR": str(root / "link"),
        "MIRROR_ALIAS_1": pair[0].alias,
        "MIRROR_BOOTSTRAP_1": pair[0].bootstrap,
        "MIRROR_ALIAS_2": pair[1].alias,
        "MIRROR_BOOTSTRAP_2": pair[1].bootstrap,
        "MIRROR_TOPICS": f"{CATALOG_TOPIC} {XREGION_TOPIC}",
    }
    try:
        starting = [script("kafka.sh", "up", kafka_env(r)) for r in pair]
        for region, process in zip(pair, starting, strict=True):
            finish(process, f"kafka.sh up for {region.alias}")
        # Before MirrorMaker starts, as a region's services create them at their start.
        for region in pair:
            asyncio.run(ensure_topics(region.settings, MIRRORED_TOPICS))
        finish(script("mirror.sh", "up", mirror_env), "mirror.sh up")
        yield Link(pair, mirror_env)
    finally:
        script("mirror.sh", "down", mirror_env).communicate(timeout=60)
        for region in pair:
            script("kafka.sh", "down", kafka_env(region)).communicate(timeout=60)


async def mirrored(
    region: Region, topic: str, ce_id: str, *, timeout: float = DEADLINE_S
) -> ConsumerRecord[bytes, bytes]:
    """The record with this ce_id on `topic` of `region`, polled until the deadline (the
    mirror topic itself appears only once MirrorMaker has seen its source)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            records = await read_topic(region.settings, topic, timeout=2.0, idle=0.5)
        except AssertionError:  # the mirror topic does not exist yet
            records = []
        for record in records:
            if ("ce_id", ce_id.encode()) in record.headers:
                return record
        await asyncio.sleep(0.5)
    raise AssertionError(f"no record {ce_id} on {topic} of {region.alias} in {timeout}s")


def cloudevent(ce_type: str, subject: str) -> tuple[str, list[tuple[str, bytes]]]:
    ce_id = str(uuid.uuid4())
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", ce_id.encode()),
        ("ce_source", b"routing"),
        ("ce_type", ce_type.encode()),
        ("ce_time", b"2026-12-07T08:00:00+08:00"),
        ("ce_subject", subject.encode()),
        ("content-type", b"application/json"),
        ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ]
    return ce_id, headers


async def assert_crosses(source: Region, target: Region, topic: str, value: bytes) -> None:
    key = f"case-{uuid.uuid4().hex[:8]}".encode()
    ce_id, headers = cloudevent("gov.case.forwarded.v1", key.decode())
    await produce(source.settings, topic, [(key, value, headers)])
    [original] = [
        r
        for r in await read_topic(source.settings, topic, min_records=1)
        if ("ce_id", ce_id.encode()) in r.headers
    ]
    copy = await mirrored(target, f"{source.alias}.{topic}", ce_id)
    assert (copy.key, copy.value) == (key, value)
    assert list(copy.headers) == headers
    assert copy.partition == original.partition


@pytest.mark.parametrize("direction", ["region1->region2", "region2->region1"])
async def test_a_forwarded_case_crosses_with_its_key_value_and_headers(
    link: Link, direction: str
) -> None:
    source, target = link.regions if direction.startswith("region1") else link.regions[::-1]
    value = json.dumps({"case_id": "x", "target_city": target.alias, "申请人": "张三"}).encode()
    await assert_crosses(source, target, XREGION_TOPIC, value)


@pytest.mark.parametrize("direction", ["region1->region2", "region2->region1"])
async def test_a_catalog_crosses_and_its_mirror_stays_compacted(link: Link, direction: str) -> None:
    source, target = link.regions if direction.startswith("region1") else link.regions[::-1]
    city = "YZ" if source.alias == ALIASES[0] else "LZ"
    value = json.dumps({"version": 1, "catalog": {"city": {"code": city}}}).encode()
    await assert_crosses(source, target, CATALOG_TOPIC, value)

    # The mirror is created with its source's configs (sync.topic.configs) and kept so.
    assert await topic_config(target, f"{source.alias}.{CATALOG_TOPIC}", "cleanup.policy") == (
        "compact"
    )


async def topic_config(region: Region, topic: str, name: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=region.bootstrap)
    await admin.start()
    try:
        (configs,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        entries = {c[0]: c[1] for c in configs.resources[0][4]}
        return str(entries[name])
    finally:
        await admin.close()


async def test_status_shows_the_link_running_and_caught_up(link: Link) -> None:
    """`mirror.sh status`: running, and (once a record has crossed each way on each topic)
    a lag of 0 records per direction and topic, read from both clusters' end offsets."""
    for source, target in (link.regions, link.regions[::-1]):
        for topic in (XREGION_TOPIC, CATALOG_TOPIC):
            await assert_crosses(source, target, topic, b"{}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while True:
        status = script("mirror.sh", "status", {**link.env, "COLUMNS": "200"})
        out, _ = await asyncio.to_thread(status.communicate, timeout=60)
        assert status.returncode == 0, out
        rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines()]
        lags = {(r[0], r[1]): r[-1] for r in rows if len(r) == 6 and "->" in r[0]}
        if len(lags) == 4 and set(lags.values()) == {"0"}:
            break
        assert loop.time() < deadline, f"not caught up in {DEADLINE_S}s:\n{out}"
        await asyncio.sleep(1)
    assert "MirrorMaker 2 running" in out


async def test_heartbeats_cross_both_ways_with_their_source_timestamps(link: Link) -> None:
    """MirrorMaker writes a heartbeat a second into each target's `heartbeats` and mirrors that
    topic whatever MIRROR_TOPICS says: each region sees `<partner alias>.heartbeats`, whose
    newest record is seconds old, the link's lag the console shows (GET /api/links)."""
    loop = asyncio.get_running_loop()
    for source, target in (link.regions, link.regions[::-1]):
        topic = f"{source.alias}.heartbeats"
        deadline = loop.time() + DEADLINE_S
        while True:
            try:
                records = await read_topic(target.settings, topic, timeout=2.0, idle=0.5)
            except AssertionError:  # not mirrored yet
                records = []
            if records:
                break
            assert loop.time() < deadline, f"no {topic} on {target.alias} in {DEADLINE_S}s"
            await asyncio.sleep(0.5)
        newest_age_s = time.time() - max(r.timestamp for r in records) / 1000
        assert -5 < newest_age_s < 15, f"{topic}: newest heartbeat {newest_age_s:.1f}s old"
