"""`tongban lag`: how far each consumer group is behind, per topic and partition.

Lag = the partition's end offset minus the group's committed offset. A partition of a topic
the group reads but has never committed on counts from the partition's first offset (all of
it is unread); its committed offset shows as none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.cli.ops.kafka_io import make_reader, partitions_of
from services.common.kafka import client_options
from services.common.settings import CommonSettings

SERVICES = ("intake", "routing", "approval", "delivery")


def service_of(group: str) -> str | None:
    """The service a group belongs to: groups are named `<service>-<what it reads>`."""
    head = group.split("-", 1)[0].split(".", 1)[0]
    return head if head in SERVICES else None


def chosen_groups(
    groups: Iterable[str], *, names: Iterable[str] = (), everything: bool = False
) -> list[str]:
    named = set(names)
    if named:
        return sorted(g for g in set(groups) if g in named)
    return sorted(g for g in set(groups) if everything or service_of(g) is not None)


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "service": service_of(self.group),
            "topic": self.topic,
            "partition": self.partition,
            "committed": self.committed,
            "end": self.end,
            "lag": self.lag,
        }


@dataclass(frozen=True)
class GroupInfo:
    group: str
    state: str
    members: int


def compute_lag(
    group: str,
    committed: Mapping[TopicPartition, int | None],
    begins: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
) -> list[PartitionLag]:
    """One row per partition of `ends` (pure)."""
    rows = []
    for tp in sorted(ends, key=lambda t: (t.topic, t.partition)):
        offset = committed.get(tp)
        if offset is not None and offset < 0:
            offset = None
        start = offset if offset is not None else begins.get(tp, 0)
        rows.append(
            PartitionLag(group, tp.topic, tp.partition, offset, ends[tp], max(0, ends[tp] - start))
        )
    return rows


def totals(rows: Iterable[PartitionLag]) -> dict[tuple[str, str], int]:
    """(group, topic) -> total lag."""
    out: dict[tuple[str, str], int] = {}
    for row in rows:
        out[(row.group, row.topic)] = out.get((row.group, row.topic), 0) + row.lag
    return out


async def fetch_lag(
    settings: CommonSettings, *, names: Iterable[str] = (), everything: bool = False
) -> tuple[list[GroupInfo], list[PartitionLag]]:
    admin = AIOKafkaAdminClient(
        **client_options(settings),
        request_timeout_ms=settings.kafka_request_timeout_ms,
    )
    await admin.start()
    consumer = make_reader(settings, client_id=f"{settings.service}-lag")
    await consumer.start()
    try:
        listed = [g[0] for g in await admin.list_consumer_groups()]
        groups = chosen_groups(listed, names=names, everything=everything)
        infos: list[GroupInfo] = []
        for group in groups:
            # One group per request: aiokafka 0.14 fails to decode Kafka 4's answer about
            # several groups at once.
            for response in await admin.describe_consumer_groups([group]):
                for g in response.to_object()["groups"]:
                    infos.append(GroupInfo(g["group"], g["state"], len(g["members"])))
        committed_by_group: dict[str, dict[TopicPartition, int | None]] = {}
        for group in groups:
            offsets = await admin.list_consumer_group_offsets(group)
            committed_by_group[group] = {tp: meta.offset for tp, meta in offsets.items()}
        topics = sorted({tp.topic for c in committed_by_group.values() for tp in c})
        found = await partitions_of(consumer, topics)
        every = [tp for tps in found.values() for tp in tps]
        begins: dict[TopicPartition, int] = await consumer.beginning_offsets(every) if every else {}
        ends: dict[TopicPartition, int] = await consumer.end_offsets(every) if every else {}
        rows: list[PartitionLag] = []
        for group in groups:
            read = {tp.topic for tp in committed_by_group[group]}
            group_ends = {tp: end for tp, end in ends.items() if tp.topic in read}
            rows.extend(compute_lag(group, committed_by_group[group], begins, group_ends))
        return infos, rows
    finally:
        await consumer.stop()
        await admin.close()
