"""Dead letters (`case.dlq.v1`): writing them, reading them back, replaying them after a fix.

A consumer that cannot apply a record (services/common/consumer.py) copies it to the
dead-letter topic unchanged (key, value, headers) and adds:
`dlq_reason`, `dlq_source` (service/consumer), `dlq_topic`, `dlq_partition`, `dlq_offset`
(where the original was).

Every dead letter is written, whatever the original holds (`DeadLetterWriter`):
- header values are UTF-8 text: an original header whose bytes are not UTF-8 is written with
  them escaped (`\xff`) and named in `dlq_escaped_headers`;
- a letter bigger than the dead-letter topic takes (`TONGBAN_DLQ_MAX_RECORD_BYTES`) keeps the
  head of its value and its small headers, and says so in `dlq_truncated`; if the broker
  still refuses it, only the `dlq_*` headers go (the minimal letter). Either way `dlq_topic`,
  `dlq_partition` and `dlq_offset` point at the whole original, on its topic for as long as
  that topic keeps it;
- broker outages are retried with backoff (the consumer does not commit past a record whose
  letter is not stored); a refusal of the record itself never is: the letter shrinks instead.

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

import asyncio
import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord

from contracts.events import DLQ_REPLAYS_TOPIC
from contracts.events import ReplayRecord as ReplayRecord  # the contract, for the ops tools
from services.common.envelope import Envelope, EnvelopeError
from services.common.kafka import TopicSpec
from services.common.logs import get_logger

log = get_logger(__name__)

DLQ_PREFIX = "dlq_"
REASON = "dlq_reason"
SOURCE = "dlq_source"
ORIGINAL_TOPIC = "dlq_topic"
ORIGINAL_PARTITION = "dlq_partition"
ORIGINAL_OFFSET = "dlq_offset"
TRUNCATED = "dlq_truncated"
ESCAPED_HEADERS = "dlq_escaped_headers"

# A truncated letter keeps the original headers up to this size each (the ce_* attributes of
# any sane event) and a key up to it; bigger ones are the reason it did not fit.
_SMALL = 1024
MAX_REASON_CHARS = 2000

REPLAYS_TOPIC = DLQ_REPLAYS_TOPIC

Headers = list[tuple[str, bytes]]


class LetterShape(enum.Enum):
    WHOLE = "whole"
    TRUNCATED = "truncated"
    MINIMAL = "minimal"


@dataclass(frozen=True)
class Letter:
    key: bytes | None
    value: bytes | None
    headers: Headers
    shape: LetterShape = LetterShape.WHOLE

    @property
    def size(self) -> int:
        """What aiokafka counts against max_request_size (one record in its own batch)."""
        return int(
            DefaultRecordBatchBuilder.estimate_size_in_bytes(self.key, self.value, self.headers)
        )


def _utf8(raw: bytes) -> tuple[bytes, bool]:
    """`raw` if it is UTF-8, else its bytes escaped as `\\xNN` text; whether it was escaped."""
    try:
        raw.decode("utf-8")
        return raw, False
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace").encode(), True


def dead_letter_headers(record: Any, reason: str, source: str) -> Headers:
    """The original headers plus why, who and where: what `tongban dlq` shows and replays.

    Every value is UTF-8 (see the module docstring); the reason is cut at 2000 characters.
    """
    headers: Headers = []
    escaped: list[str] = []
    for name, raw in record.headers or ():
        if name.startswith(DLQ_PREFIX):
            continue
        value, was_escaped = _utf8(raw if raw is not None else b"")
        if was_escaped:
            escaped.append(name)
        headers.append((name, value))
    if escaped:
        names = ",".join(escaped)[:MAX_REASON_CHARS]
        headers.append((ESCAPED_HEADERS, names.encode("utf-8", "backslashreplace")))
    return [
        *headers,
        (REASON, reason[:MAX_REASON_CHARS].encode("utf-8", "backslashreplace")),
        (SOURCE, source.encode("utf-8", "backslashreplace")),
        (ORIGINAL_TOPIC, str(record.topic).encode("utf-8", "backslashreplace")),
        (ORIGINAL_PARTITION, str(record.partition).encode()),
        (ORIGINAL_OFFSET, str(record.offset).encode()),
    ]


def shape_letter(record: Any, reason: str, source: str, *, max_bytes: int) -> Letter:
    """The dead letter of `record`: whole if it fits in `max_bytes`, else truncated."""
    headers = dead_letter_headers(record, reason, source)
    whole = Letter(record.key, record.value, headers)
    if whole.size <= max_bytes:
        return whole
    kept = [
        (n, v) for n, v in headers if n.startswith(DLQ_PREFIX) or len(n.encode()) + len(v) <= _SMALL
    ]
    dropped = [n for n, _v in headers if (n, _v) not in kept]
    key = record.key[:_SMALL] if record.key is not None else None
    value = record.value or b""
    note = f"value: {len(value)} bytes, first {{kept}} kept" + (
        f"; headers dropped: {', '.join(dropped)}" if dropped else ""
    )
    # The note's own length depends on the number it carries: budget with the longest one.
    probe = Letter(key, b"", [*kept, (TRUNCATED, note.format(kept=len(value)).encode())])
    room = max(0, max_bytes - probe.size - 16)  # varint growth of the record's length
    head = value[:room]
    return Letter(
        key,
        head,
        [*kept, (TRUNCATED, note.format(kept=len(head)).encode("utf-8", "backslashreplace"))],
        LetterShape.TRUNCATED,
    )


def unreadable_record(topic: str, partition: int, offset: int) -> ConsumerRecord[bytes, bytes]:
    """Stands for a record the Kafka client could not parse: its letter can only say where it
    is (`dlq_topic`, `dlq_partition`, `dlq_offset`); there are no bytes to copy."""
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=-1,
        timestamp_type=0,
        key=None,
        value=b"",  # a record needs a key or a value
        checksum=None,
        serialized_key_size=-1,
        serialized_value_size=-1,
        headers=(),
    )


def minimal_letter(record: Any, reason: str, source: str, refusal: str) -> Letter:
    """The dead letter that always fits: no value, no original headers, only where to find
    the original and why it was dead-lettered."""
    headers = [
        (n, v) for n, v in dead_letter_headers(record, reason, source) if n.startswith(DLQ_PREFIX)
    ]
    note = f"value and headers dropped: the broker refused the letter ({refusal[:200]})"
    key = record.key[:_SMALL] if record.key is not None else None
    return Letter(
        key,
        b"",
        [*headers, (TRUNCATED, note.encode("utf-8", "backslashreplace"))],
        LetterShape.MINIMAL,
    )


def _is_outage(exc: KafkaError) -> bool:
    """A broker that is away or busy, not a refusal of this record: worth retrying."""
    return bool(getattr(exc, "retriable", False)) or isinstance(exc, KafkaTimeoutError)


class DeadLetterWriter:
    """Writes dead letters to `topic` and never gives up on one, nor loops on it:
    refused letters shrink (whole -> truncated -> minimal), outages are waited out."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        topic: str,
        max_bytes: int,
        retry_backoff_s: float = 0.5,
        retry_backoff_max_s: float = 5.0,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.max_bytes = max_bytes
        self.retry_backoff_s = retry_backoff_s or 0.1
        self.retry_backoff_max_s = max(retry_backoff_max_s, self.retry_backoff_s)

    async def write(
        self, record: Any, reason: str, source: str, *, stop: asyncio.Event | None = None
    ) -> LetterShape | None:
        """Store the letter; its shape, or None if `stop` was set while the broker was away
        (the letter is not stored: do not commit past the record)."""
        letter = shape_letter(record, reason, source, max_bytes=self.max_bytes)
        backoff = self.retry_backoff_s
        while True:
            try:
                await self.producer.send_and_wait(
                    self.topic, key=letter.key, value=letter.value, headers=letter.headers
                )
                return letter.shape
            except KafkaError as exc:
                if not _is_outage(exc) and letter.shape is not LetterShape.MINIMAL:
                    # The broker (or the client's own size check) refuses this record: send
                    # less of it rather than try the same bytes again.
                    log.warning(
                        "dead letter refused; sending the minimal letter",
                        topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                        size=letter.size,
                        error=repr(exc),
                    )
                    letter = minimal_letter(record, reason, source, repr(exc))
                    continue
                # Not the record's fault: the broker is away, or refuses even the minimal
                # letter (ACLs, a missing topic). Never commit past a record whose letter is
                # not stored; wait for the broker or the operator.
                log.warning("dead-letter publish failed; retrying", error=repr(exc))
            if stop is None:
                await asyncio.sleep(backoff)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                    return None
                except TimeoutError:
                    pass
            backoff = min(backoff * 2, self.retry_backoff_max_s)


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
