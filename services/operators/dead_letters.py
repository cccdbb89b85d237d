"""Dead letters as operators see them (`tongban dlq`, the console): read back from the
dead-letter topic, and replayed after a fix. How they are written: services/common/dlq.py.

A replay re-publishes the original record (its key, value and headers without the `dlq_*`
ones) to its original topic with an idempotent producer, then records the replay on
`case.dlq.replays.v1` (a `contracts.events.ReplayRecord` as JSON, key
`<dlq topic>/<partition>/<offset>`; contracts/asyncapi.yaml). The replayed event keeps
its `ce_id`: consumers record an event id as processed only when they applied it, and a
dead-lettered event was not applied, so it is applied once; a replay that is repeated by
mistake finds its id processed and is skipped by the inbox. Every group reading the original
topic receives the replayed record, not only the one that dead-lettered it; the groups that
had applied it already find its id in their inbox and skip it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from contracts.events import DLQ_REPLAYS_TOPIC, ReplayRecord
from services.common.dlq import (
    DLQ_PREFIX,
    ESCAPED_HEADERS,
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
    ORIGINAL_TOPIC,
    REASON,
    SOURCE,
    TRUNCATED,
    Headers,
)
from services.common.envelope import Envelope, EnvelopeError
from services.common.kafka import TopicSpec

REPLAYS_TOPIC = DLQ_REPLAYS_TOPIC


def replays_topic_spec(name: str = REPLAYS_TOPIC) -> TopicSpec:
    # One partition: the replay history of the whole dead-letter topic, in replay order.
    return TopicSpec(name, partitions=1)


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", errors="replace") if raw is not None else ""


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class DeadLetter:
    """One record of a dead-letter topic, with what its headers say about the original."""

    topic: str  # the dead-letter topic
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, record: Any) -> DeadLetter:
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=int(record.timestamp),
            key=record.key,
            value=record.value,
            headers=tuple((str(k), v if v is not None else b"") for k, v in record.headers or ()),
        )

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return _text(value)
        return None

    @property
    def ref(self) -> str:
        """How operators name it: `<partition>:<offset>`."""
        return f"{self.partition}:{self.offset}"

    @property
    def reason(self) -> str:
        return self.header(REASON) or ""

    @property
    def source(self) -> str:
        return self.header(SOURCE) or ""

    @property
    def original_topic(self) -> str | None:
        return self.header(ORIGINAL_TOPIC) or None

    @property
    def original_partition(self) -> int | None:
        return _int(self.header(ORIGINAL_PARTITION))

    @property
    def original_offset(self) -> int | None:
        return _int(self.header(ORIGINAL_OFFSET))

    @property
    def event_id(self) -> str | None:
        return self.header("ce_id")

    @property
    def event_type(self) -> str | None:
        return self.header("ce_type")

    @property
    def case_id(self) -> str | None:
        return self.header("ce_subject") or (_text(self.key) if self.key else None)

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)

    def original_headers(self) -> Headers:
        return [(k, v) for k, v in self.headers if not k.startswith(DLQ_PREFIX)]

    @property
    def altered(self) -> str | None:
        """Why this letter is not the original record (truncated, headers escaped), if so:
        replaying it would publish something else; the original is at its dlq_* place."""
        truncated = self.header(TRUNCATED)
        if truncated is not None:
            return f"truncated ({truncated})"
        escaped = self.header(ESCAPED_HEADERS)
        if escaped is not None:
            return f"headers that were not UTF-8 are escaped ({escaped})"
        return None

    def envelope_problem(self) -> str | None:
        """Why the original is not a valid CloudEvent (it would be dead-lettered again)."""
        try:
            Envelope.from_record(self.key, self.value, self.original_headers())
        except EnvelopeError as exc:
            return str(exc)
        return None


def replay_key(topic: str, partition: int, offset: int) -> bytes:
    return f"{topic}/{partition}/{offset}".encode()


class ReplayError(ValueError):
    """A dead letter that cannot be replayed as it is."""


async def replay(
    producer: AIOKafkaProducer,
    letter: DeadLetter,
    *,
    operator: str,
    replays_topic: str = REPLAYS_TOPIC,
    forced: bool = False,
) -> ReplayRecord:
    """Re-publish the original record to its original topic, then record the replay.

    Publishing comes first: if recording fails, a later replay of the same letter is refused
    only by the consumers' inbox (same event id), never lost.
    """
    target = letter.original_topic
    if not target:
        raise ReplayError(f"dead letter {letter.ref} names no original topic ({ORIGINAL_TOPIC})")
    if letter.altered is not None:
        raise ReplayError(f"dead letter {letter.ref} is not the original record: {letter.altered}")
    sent = await producer.send_and_wait(
        target, key=letter.key, value=letter.value, headers=letter.original_headers()
    )
    entry = ReplayRecord(
        dlq_topic=letter.topic,
        dlq_partition=letter.partition,
        dlq_offset=letter.offset,
        original_topic=target,
        original_partition=letter.original_partition,
        original_offset=letter.original_offset,
        event_id=letter.event_id,
        event_type=letter.event_type,
        case_id=letter.case_id,
        replayed_to_partition=sent.partition,
        replayed_to_offset=sent.offset,
        replayed_at=datetime.now(UTC),
        operator=operator,
        forced=forced,
    )
    await producer.send_and_wait(
        replays_topic,
        key=replay_key(letter.topic, letter.partition, letter.offset),
        value=entry.model_dump_json().encode(),
        headers=[("content-type", b"application/json")],
    )
    return entry


def parse_replays(values: list[bytes | None]) -> list[ReplayRecord]:
    """The readable replay records among these values (others are skipped)."""
    out = []
    for value in values:
        if value is None:
            continue
        try:
            out.append(ReplayRecord.model_validate_json(value))
        except ValueError:
            continue
    return out
