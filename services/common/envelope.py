"""CloudEvents 1.0 binary-mode envelope for every tongban Kafka record (DESIGN.md §4).

Key = case id; headers `ce_specversion`, `ce_id`, `ce_source`, `ce_type`, `ce_time`,
`ce_subject`, `content-type: application/json`, optional `ce_handledby` and W3C `traceparent`;
value = the event data as JSON. The `cloudevents` SDK does the header mapping.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

CONTENT_TYPE = "application/json"
REQUIRED_HEADERS = ("ce_specversion", "ce_id", "ce_source", "ce_type")
# Extension attributes tongban uses; `traceparent` follows the CloudEvents distributed-tracing
# extension, which the Kafka binding maps to `ce_traceparent`; we also set the bare W3C header
# that OpenTelemetry's Kafka propagators read.
EXTENSIONS = ("handledby", "traceparent", "tocity", "fromcity")

_FORMAT = JSONFormat()

# Headers whose text tongban reads; any other header is carried along untouched.
_READ_HEADERS = ("content-type", "traceparent")
# CloudEvents 1.0, type system, String: "MUST NOT contain control characters (U+0000-U+001F,
# U+007F-U+009F), noncharacters or surrogates" (surrogates cannot survive strict UTF-8
# decoding; they are listed for attributes that reach us otherwise).
_NOT_IN_ATTRIBUTES = re.compile(
    "[\x00-\x1f\x7f-\x9f\ufdd0-\ufdef\ud800-\udfff"
    + "".join(f"{chr(p + 0xFFFE)}{chr(p + 0xFFFF)}" for p in range(0, 0x110000, 0x10000))
    + "]"
)
# In event data: what PostgreSQL text and JSONB cannot store (NUL) or UTF-8 cannot encode
# (lone surrogates, which JSON's \u escapes can produce).
_NOT_IN_DATA = re.compile("[\x00\ud800-\udfff]")
# Strict JSON has no raw control characters in strings and strict UTF-8 no surrogates: only
# these escapes can bring either into parsed data, so the walk runs only when one is there.
_MAYBE_UNSTORABLE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")

Headers = list[tuple[str, bytes]]


class EnvelopeError(ValueError):
    """A record that is not a tongban CloudEvent (poison): it goes to the dead-letter topic."""


@dataclass(frozen=True)
class Envelope:
    type: str
    source: str
    subject: str  # the case id (or catalog id); also the Kafka key
    data: dict[str, Any]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    handledby: str | None = None
    traceparent: str | None = None
    # Across regions (DESIGN.md §9): on xregion.out.v1, the city a record is addressed to and
    # the city whose region published it (`ce_tocity`, `ce_fromcity`).
    tocity: str | None = None
    fromcity: str | None = None

    @property
    def key(self) -> bytes:
        return self.subject.encode()

    def to_record(self) -> tuple[bytes, bytes, Headers]:
        """(key, value, headers) ready for aiokafka's `send`."""
        attributes: dict[str, Any] = {
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "time": self.time,
            "datacontenttype": CONTENT_TYPE,
        }
        for ext in EXTENSIONS:
            if getattr(self, ext):
                attributes[ext] = getattr(self, ext)
        message = ce_kafka.to_binary(
            CloudEvent(attributes=attributes, data=self.data),
            _FORMAT,
            key_mapper=lambda _e: self.key,
        )
        headers: Headers = list(message.headers.items())
        if self.traceparent:
            headers.append(("traceparent", self.traceparent.encode()))
        return self.key, message.value, headers

    @classmethod
    def from_record(cls, key: bytes | None, value: bytes | None, headers: Headers) -> Envelope:
        """Parse a binary-mode record; raise EnvelopeError saying what is wrong with it.

        Any bytes in, EnvelopeError or an Envelope out: attributes must be UTF-8 without the
        characters CloudEvents forbids, data must be JSON that PostgreSQL can store.
        """
        # Kafka allows repeated headers; the CloudEvents binding wants one value per name.
        header_map: dict[str, bytes] = {}
        for name, raw in headers or ():
            header_map.setdefault(name.lower(), raw if raw is not None else b"")
        missing = [h for h in REQUIRED_HEADERS if h not in header_map]
        if missing:
            raise EnvelopeError(f"not a CloudEvent in binary mode: missing headers {missing}")
        for name, raw in header_map.items():
            if name.startswith("ce_") or name in _READ_HEADERS:
                _check_attribute(name, raw)
        empty = [h for h in REQUIRED_HEADERS if not header_map[h]]
        if empty:
            raise EnvelopeError(f"empty CloudEvents attributes {empty}")
        if key is not None:
            _check_attribute("record key", key)
        content_type = header_map.get("content-type", b"").decode()
        if content_type and not content_type.startswith(CONTENT_TYPE):
            raise EnvelopeError(f"content-type {content_type!r:.100} is not {CONTENT_TYPE}")
        if value is None:
            raise EnvelopeError("record has no value (tombstone) where event data is expected")
        parsed = _check_data(value)
        bare_traceparent = header_map.pop("traceparent", None)
        try:
            event = ce_kafka.from_binary(
                ce_kafka.KafkaMessage(headers=header_map, key=key, value=value), _Parsed(parsed)
            )
        except Exception as exc:  # the SDK raises several types for bad attributes
            raise EnvelopeError(f"invalid CloudEvent attributes: {exc}") from exc
        data = event.get_data()
        if not isinstance(data, dict):
            raise EnvelopeError(f"event data must be a JSON object, got {type(data).__name__}")
        attrs = event.get_attributes()
        subject = attrs.get("subject") or (key.decode(errors="replace") if key else None)
        if not subject:
            raise EnvelopeError("event has neither ce_subject nor a record key (the case id)")
        time = attrs.get("time")
        if not isinstance(time, datetime):
            raise EnvelopeError("ce_time is missing or not an RFC 3339 timestamp")
        try:
            time.astimezone(UTC)
        except (OverflowError, ValueError) as exc:  # year 1 west of UTC, 9999 east of it
            raise EnvelopeError(f"ce_time is outside the range of UTC timestamps: {exc}") from exc
        traceparent = attrs.get("traceparent") or (
            bare_traceparent.decode() if bare_traceparent else None
        )
        return cls(
            type=str(attrs["type"]),
            source=str(attrs["source"]),
            subject=str(subject),
            data=data,
            id=str(attrs["id"]),
            time=time,
            handledby=attrs.get("handledby"),
            traceparent=traceparent,
            tocity=attrs.get("tocity"),
            fromcity=attrs.get("fromcity"),
        )


class _Parsed(JSONFormat):
    """The JSON format, handing the SDK the data `_check_data` parsed (no second parse)."""

    def __init__(self, data: Any) -> None:
        super().__init__()
        self._data = data

    def read_data(self, body: bytes, datacontenttype: str | None) -> Any:
        return self._data


def _check_attribute(name: str, raw: bytes) -> None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EnvelopeError(f"{name} is not UTF-8 (byte {exc.start})") from exc
    if text.isascii() and text.isprintable():
        return  # the common case: U+0020..U+007E only, nothing CloudEvents forbids
    bad = _NOT_IN_ATTRIBUTES.search(text)
    if bad is not None:
        raise EnvelopeError(
            f"{name} holds U+{ord(bad.group()):04X} at {bad.start()}: CloudEvents attributes "
            "must not contain control characters, noncharacters or surrogates"
        )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_data(value: bytes) -> Any:
    """The value parsed: UTF-8 JSON (no NaN/Infinity) whose strings PostgreSQL can store."""
    try:
        data = json.loads(value.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise EnvelopeError(f"value is not UTF-8 (byte {exc.start})") from exc
    except RecursionError as exc:
        raise EnvelopeError("value is not JSON: nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, NaN, an integer of thousands of digits
        raise EnvelopeError(f"value is not JSON: {str(exc)[:200]}") from exc
    if _MAYBE_UNSTORABLE.search(value) is None:
        return data
    todo: list[Any] = [data]  # a loop, not recursion: nesting depth is the sender's choice
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            todo.extend(node.keys())
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
        elif isinstance(node, str) and (bad := _NOT_IN_DATA.search(node)) is not None:
            raise EnvelopeError(
                f"event data holds U+{ord(bad.group()):04X}, which cannot be stored "
                "(PostgreSQL text has no NUL; UTF-8 has no lone surrogates)"
            )
    return data
