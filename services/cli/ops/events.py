"""A read-only view of one Kafka record of a tongban topic, tolerant of poison records.

`tail` and `dlq` show whatever is on a topic, including records that are not valid CloudEvents;
so the view parses what it can (headers, JSON value) and keeps the parse error for the rest.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, Protocol, TypeAlias

from services.common.city import CITY_TZ

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# (event time in µs since the epoch, record timestamp ms, topic, partition, offset)
SortKey: TypeAlias = tuple[int, int, str, int, int]


class RecordLike(Protocol):
    """What we read from an aiokafka `ConsumerRecord` (tests build plain objects)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Any


@dataclass(frozen=True)
class EventView:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    headers: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] | None = None
    value_text: str | None = None  # the value as text when it is not a JSON object
    error: str | None = None  # why the record is not a readable event, if it is not

    @property
    def type(self) -> str | None:
        return self.headers.get("ce_type")

    @property
    def event_id(self) -> str | None:
        return self.headers.get("ce_id")

    @property
    def case_id(self) -> str | None:
        subject = self.headers.get("ce_subject") or self.key
        if subject:
            return subject
        if self.data is not None and isinstance(self.data.get("case_id"), str):
            return str(self.data["case_id"])
        return None

    @cached_property
    def event_time(self) -> datetime:
        """When the event happened: its `ce_time`, or the record's timestamp for a record
        without a readable one (poison records). What `tail` shows and orders by."""
        stamped = _rfc3339(self.headers.get("ce_time"))
        if stamped is not None:
            return stamped
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)

    @property
    def time(self) -> datetime:
        """The event time in the city's time zone."""
        return self.event_time.astimezone(CITY_TZ)

    @cached_property
    def sort_key(self) -> SortKey:
        """Event time to the microsecond, then the record's timestamp, topic, partition and
        offset: a total order (no two records share topic, partition and offset)."""
        moment = self.event_time
        micros = (moment - _EPOCH) // timedelta(microseconds=1)
        return (micros, self.timestamp_ms, self.topic, self.partition, self.offset)

    @property
    def coordinates(self) -> str:
        return f"{self.topic}/{self.partition}@{self.offset}"


def _rfc3339(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None  # RFC 3339 always has an offset


def decode_headers(headers: Any) -> dict[str, str]:
    """Header name -> text; the first of repeated names wins (as in the envelope parser)."""
    out: dict[str, str] = {}
    for name, raw in headers or ():
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw or "")
        out.setdefault(str(name).lower(), text)
    return out


def view_of(record: RecordLike) -> EventView:
    headers = decode_headers(record.headers)
    key = record.key.decode("utf-8", errors="replace") if record.key is not None else None
    data: dict[str, Any] | None = None
    value_text: str | None = None
    error: str | None = None
    if record.value is None:
        error = "no value (tombstone)"
    else:
        try:
            parsed = json.loads(record.value)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            error = f"value is not JSON: {exc}"
            value_text = record.value[:2000].decode("utf-8", errors="replace")
        else:
            if isinstance(parsed, dict):
                data = parsed
            else:
                error = f"value is JSON {type(parsed).__name__}, not an object"
                value_text = record.value[:2000].decode("utf-8", errors="replace")
    if error is None and "ce_type" not in headers:
        error = "not a CloudEvent in binary mode: no ce_type header"
    return EventView(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=int(record.timestamp),
        key=key,
        headers=headers,
        data=data,
        value_text=value_text,
        error=error,
    )


# -- times given on the command line -------------------------------------------------------------

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (without an offset: city time, Asia/Shanghai), or a span back from now
    (`90s`, `30m`, `2h`, `1d`). Raises ValueError with a readable message."""
    text = text.strip()
    match = _RELATIVE.match(text)
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 time (2026-11-29T09:30, city time unless an offset "
            "is given) nor a span back from now (90s, 30m, 2h, 1d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=CITY_TZ)
    return moment
