"""The shape of a dead letter: whole when it fits, truncated when not, UTF-8 headers always."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from services.cli.ops.dlq import refusal
from services.common.db import INBOX_LITERAL_MAX, inbox_key
from services.common.dlq import (
    ESCAPED_HEADERS,
    TRUNCATED,
    LetterShape,
    dead_letter_headers,
    minimal_letter,
    shape_letter,
)
from services.operators.dead_letters import DeadLetter

pytestmark = pytest.mark.unit

MAX = 64 * 1024


@dataclass
class Record:
    value: bytes | None
    key: bytes | None = b"HC-2026-000001"
    headers: list[tuple[str, bytes | None]] = field(
        default_factory=lambda: [("ce_id", b"e-1"), ("ce_type", b"gov.case.submitted.v1")]
    )
    topic: str = "case.intake.v1"
    partition: int = 3
    offset: int = 17


def names(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    return {n: v.decode("utf-8") for n, v in headers}  # every value must decode


def test_a_letter_that_fits_is_the_original_plus_where_and_why() -> None:
    record = Record(b'{"a": 1}')
    letter = shape_letter(record, "malformed: x", "intake/intake-intake", max_bytes=MAX)
    assert letter.shape is LetterShape.WHOLE
    assert (letter.key, letter.value) == (record.key, record.value)
    got = names(letter.headers)
    assert got["ce_id"] == "e-1" and got["dlq_reason"] == "malformed: x"
    assert (got["dlq_topic"], got["dlq_partition"], got["dlq_offset"]) == (
        "case.intake.v1",
        "3",
        "17",
    )
    assert TRUNCATED not in got


def test_header_values_that_are_not_utf8_are_escaped_and_named() -> None:
    record = Record(b"{}", headers=[("ce_id", b"\xff\xfeid"), ("ce_source", None), ("x", b"ok")])
    headers = dead_letter_headers(record, "reason \udc80 with a lone surrogate", "s")
    got = names(headers)
    assert got["ce_id"] == "\\xff\\xfeid"
    assert got[ESCAPED_HEADERS] == "ce_id"
    assert got["ce_source"] == "" and got["x"] == "ok"
    assert "\\udc80" in got["dlq_reason"]


def test_a_letter_too_big_keeps_the_head_of_its_value_and_a_reference_to_the_original() -> None:
    huge_id = b"i" * 5000
    record = Record(b"v" * 200_000, headers=[("ce_id", huge_id), ("ce_type", b"t")])
    letter = shape_letter(record, "r" * 10_000, "s", max_bytes=MAX)
    assert letter.shape is LetterShape.TRUNCATED
    assert letter.size <= MAX
    assert letter.value is not None and 0 < len(letter.value) < 200_000
    assert record.value is not None and record.value.startswith(letter.value)
    got = names(letter.headers)
    assert "ce_id" not in got and got["ce_type"] == "t"
    assert got[TRUNCATED] == (
        f"value: 200000 bytes, first {len(letter.value)} kept; headers dropped: ce_id"
    )
    assert got["dlq_offset"] == "17" and len(got["dlq_reason"]) == 2000
    # What operators read back from it.
    letter_record = DeadLetter(
        topic="case.dlq.v1",
        partition=0,
        offset=0,
        timestamp_ms=0,
        key=letter.key,
        value=letter.value,
        headers=tuple(letter.headers),
    )
    assert (letter_record.original_topic, letter_record.original_offset) == ("case.intake.v1", 17)


def test_the_minimal_letter_has_only_the_dlq_headers() -> None:
    record = Record(b"v" * 10, key=b"k" * 5000, headers=[("ce_id", b"x" * 900_000)])
    letter = minimal_letter(record, "why", "src", "MessageSizeTooLargeError()")
    assert letter.shape is LetterShape.MINIMAL
    assert letter.value == b"" and letter.key == b"k" * 1024
    assert {n for n, _ in letter.headers} == {
        "dlq_reason",
        "dlq_source",
        "dlq_topic",
        "dlq_partition",
        "dlq_offset",
        TRUNCATED,
    }
    assert letter.size < 4096


def test_inbox_keys_are_the_id_up_to_64_characters_and_a_digest_above() -> None:
    short = "事" * INBOX_LITERAL_MAX
    assert inbox_key(short) == short  # what rows written before long ids were accepted hold
    long_a, long_b = "a" * 65, "a" * 64 + "b"
    assert inbox_key(long_a).startswith("sha256:") and len(inbox_key(long_a)) == 71
    assert inbox_key(long_a) != inbox_key(long_b)
    # A literal id that looks like a digest key is longer than 64: it is digested itself.
    assert inbox_key(inbox_key(long_a)) != inbox_key(long_a)


def as_read_back(letter_headers: list[tuple[str, bytes]], value: bytes | None) -> DeadLetter:
    return DeadLetter(
        topic="case.dlq.v1",
        partition=0,
        offset=5,
        timestamp_ms=0,
        key=b"HC-1",
        value=value,
        headers=tuple(letter_headers),
    )


def test_a_truncated_or_escaped_letter_is_never_replayed_even_with_force() -> None:
    big = shape_letter(Record(b"v" * 200_000), "r", "s", max_bytes=MAX)
    truncated = as_read_back(big.headers, big.value)
    assert truncated.altered is not None and truncated.altered.startswith("truncated")
    why = refusal(truncated, [], force=True) or ""
    assert "truncated" in why and "case.intake.v1/3@17" in why
    escaped = as_read_back(
        dead_letter_headers(Record(b"{}", headers=[("ce_source", b"\xff")]), "r", "s"), b"{}"
    )
    assert "ce_source" in (refusal(escaped, [], force=True) or "")
    whole = as_read_back(dead_letter_headers(Record(b"{}"), "r", "s"), b"{}")
    assert whole.altered is None
