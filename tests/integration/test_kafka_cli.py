"""Apache Kafka's own command-line tools, as the README shows them (`deploy/local/kafka-cli.sh`,
the kafka-tools jars fetched beside the broker), against the real broker."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from services.common.settings import CommonSettings
from tests.conftest import ROOT, MakeTopic
from tests.integration.test_ops_cli import group_behind

pytestmark = pytest.mark.integration

SCRIPT = ROOT / "deploy" / "local" / "kafka-cli.sh"


def kafka_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=dict(os.environ),  # TONGBAN_KAFKA_BOOTSTRAP of the running stack
        stdin=subprocess.DEVNULL,
    )


def table(stdout: str) -> list[dict[str, str]]:
    """Rows of a whitespace-aligned table whose header line starts with GROUP."""
    rows: list[dict[str, str]] = []
    header: list[str] | None = None
    for line in stdout.splitlines():
        cells = line.split()
        if not cells:
            continue
        if cells[0] == "GROUP":
            header = cells
        elif header is not None:
            rows.append(dict(zip(header, cells, strict=False)))
    return rows


async def test_topics_and_consumer_groups_tools(
    settings: CommonSettings, make_topic: MakeTopic
) -> None:
    topic = await make_topic("clitools")
    group = await group_behind(settings, topic, "clitools")

    listed = await asyncio.to_thread(kafka_cli, "kafka-topics", "--list")
    assert listed.returncode == 0, listed.stderr
    assert topic in listed.stdout.split()

    described = await asyncio.to_thread(kafka_cli, "kafka-topics", "--describe", "--topic", topic)
    assert described.returncode == 0, described.stderr
    assert f"Topic: {topic}" in described.stdout and "PartitionCount: 3" in described.stdout

    groups = await asyncio.to_thread(kafka_cli, "kafka-consumer-groups.sh", "--list")
    assert groups.returncode == 0, groups.stderr
    assert group in groups.stdout.split()

    described = await asyncio.to_thread(
        kafka_cli, "kafka-consumer-groups", "--describe", "--group", group
    )
    assert described.returncode == 0, described.stderr
    rows = {int(r["PARTITION"]): r for r in table(described.stdout) if r.get("TOPIC") == topic}
    got = {p: (r["CURRENT-OFFSET"], r["LOG-END-OFFSET"], r["LAG"]) for p, r in rows.items()}
    assert got[0] == ("4", "10", "6")
    assert got[1] == ("3", "3", "0")
    assert all(r["GROUP"] == group for r in rows.values())

    every = await asyncio.to_thread(
        kafka_cli, "kafka-consumer-groups", "--describe", "--all-groups"
    )
    assert every.returncode == 0, every.stderr
    assert any(r["GROUP"] == group and r.get("LAG") == "6" for r in table(every.stdout))


async def test_unknown_tool_and_help() -> None:
    unknown = await asyncio.to_thread(kafka_cli, "kafka-no-such-tool")
    assert unknown.returncode == 2
    assert "unknown tool kafka-no-such-tool" in unknown.stderr
    shown = await asyncio.to_thread(kafka_cli, "--help")
    assert shown.returncode == 0
    assert "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand" in shown.stdout
