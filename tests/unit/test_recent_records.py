"""Each record is parsed once per process, whichever of its consumer groups reads it first."""

from __future__ import annotations

import pytest

from services.common.envelope import Envelope, EnvelopeError, RecentRecords

pytestmark = pytest.mark.unit


def record(seq: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    return Envelope(
        type="gov.test.happened.v1", source="/tongban/test", subject="HC-1", data={"seq": seq}
    ).to_record()


def test_the_same_bytes_give_the_same_envelope_and_other_bytes_their_own() -> None:
    recent = RecentRecords()
    key, value, headers = record(1)
    first = recent.envelope(key, value, tuple(headers))
    again = recent.envelope(bytes(key), bytes(value), tuple(headers))  # another reader's copy
    assert again is first
    other = recent.envelope(*record(2)[:2], tuple(record(2)[2]))
    assert other.data == {"seq": 2} and other is not first


def test_poison_is_refused_with_its_reason_every_time() -> None:
    recent = RecentRecords()
    key, _value, headers = record(1)
    for _ in range(2):
        with pytest.raises(EnvelopeError, match="not JSON"):
            recent.envelope(key, b"{not json", tuple(headers))


def test_it_keeps_at_most_size_records_oldest_out_first() -> None:
    recent = RecentRecords(size=2)
    records = [record(n) for n in range(3)]
    first = recent.envelope(records[0][0], records[0][1], tuple(records[0][2]))
    for key, value, headers in records[1:]:
        recent.envelope(key, value, tuple(headers))
    assert recent.envelope(records[0][0], records[0][1], tuple(records[0][2])) is not first


def test_headers_of_no_hash_are_parsed_without_the_cache() -> None:
    recent = RecentRecords()
    key, value, headers = record(1)
    unhashable = [[name, raw] for name, raw in headers]  # lists: no hash
    assert recent.envelope(key, value, unhashable).data == {"seq": 1}
