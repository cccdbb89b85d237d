"""Dead letters (`case.dlq.v1`): writing one for every record a consumer cannot apply.

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

Reading dead letters back and replaying them serves operators only: services/operators/
dead_letters.py.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord

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
