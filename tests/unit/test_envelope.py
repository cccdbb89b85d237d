import json
from datetime import UTC, datetime

import pytest

from services.common.envelope import Envelope, EnvelopeError

pytestmark = pytest.mark.unit

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def sample(**overrides: object) -> Envelope:
    fields: dict[str, object] = {
        "type": "gov.case.routed.v1",
        "source": "/tongban/routing",
        "subject": "HC-2026-000001",
        "data": {"path": "delegated", "note": "食品经营许可"},
        "time": datetime(2026, 11, 29, 2, 3, 4, 500000, tzinfo=UTC),
        "handledby": "HC01-MKT",
        "traceparent": TRACEPARENT,
    }
    fields.update(overrides)
    return Envelope(**fields)  # type: ignore[arg-type]


def test_round_trip_keeps_every_attribute() -> None:
    event = sample()
    key, value, headers = event.to_record()
    assert Envelope.from_record(key, value, headers) == event


def test_record_carries_the_contract_headers() -> None:
    event = sample()
    key, value, headers = event.to_record()
    names = dict(headers)
    assert key == b"HC-2026-000001"
    assert names["ce_specversion"] == b"1.0"
    assert names["ce_id"] == event.id.encode()
    assert names["ce_source"] == b"/tongban/routing"
    assert names["ce_type"] == b"gov.case.routed.v1"
    assert names["ce_subject"] == b"HC-2026-000001"
    assert names["ce_time"] == b"2026-11-29T02:03:04.500000Z"
    assert names["content-type"] == b"application/json"
    assert names["ce_handledby"] == b"HC01-MKT"
    assert names["traceparent"] == TRACEPARENT.encode()
    assert json.loads(value) == {"path": "delegated", "note": "食品经营许可"}


def test_optional_extensions_are_left_out_when_absent() -> None:
    _key, _value, headers = sample(handledby=None, traceparent=None).to_record()
    names = [n for n, _ in headers]
    assert "ce_handledby" not in names and "traceparent" not in names


def test_each_event_gets_its_own_id() -> None:
    assert sample().id != Envelope(type="t", source="s", subject="c", data={}).id


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda k, v, h: (k, b"not json{", h), "not JSON"),
        (lambda k, v, h: (k, b"[1, 2]", h), "JSON object"),
        (lambda k, v, h: (k, None, h), "no value"),
        (lambda k, v, h: (k, v, [x for x in h if x[0] != "ce_type"]), "missing headers"),
        (lambda k, v, h: (k, v, []), "missing headers"),
        (
            lambda k, v, h: (
                k,
                v,
                [x for x in h if x[0] != "content-type"] + [("content-type", b"text/xml")],
            ),
            "content-type",
        ),
        (
            lambda k, v, h: (
                k,
                v,
                [x for x in h if x[0] != "ce_time"] + [("ce_time", b"yesterday")],
            ),
            "ce_time|CloudEvent attributes",
        ),
    ],
)
def test_malformed_records_are_refused_with_a_reason(mutate, message) -> None:
    key, value, headers = mutate(*sample().to_record())
    with pytest.raises(EnvelopeError, match=message):
        Envelope.from_record(key, value, headers)


def with_header(name: str, raw: bytes) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    key, value, headers = sample().to_record()
    return key, value, [(n, v) for n, v in headers if n != name] + [(name, raw)]


def with_value(raw: bytes) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    key, _value, headers = sample().to_record()
    return key, raw, headers


SURROGATE = "\ud800".encode("utf-8", "surrogatepass")  # what a careless encoder writes


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (with_header("ce_id", b"\xff\xfe"), "ce_id is not UTF-8"),
        (with_header("ce_id", SURROGATE), "ce_id is not UTF-8"),
        (with_header("ce_id", b"a\x00b"), "ce_id holds U\\+0000"),
        (with_header("ce_source", b"/a\nb"), "ce_source holds U\\+000A"),
        (with_header("ce_type", "x\x85y".encode()), "ce_type holds U\\+0085"),
        (with_header("ce_subject", "HC\ufffe".encode()), "ce_subject holds U\\+FFFE"),
        (with_header("ce_handledby", "D\U0010ffff".encode()), "U\\+10FFFF"),
        (with_header("traceparent", b"00-\x01"), "traceparent holds U\\+0001"),
        (with_header("content-type", b"application/json\xc3"), "content-type is not UTF-8"),
        (with_header("ce_id", b""), "empty CloudEvents attributes"),
        (with_header("ce_time", b"0001-01-01T00:00:00+05:00"), "range of UTC"),
        ((b"\xff", *sample().to_record()[1:]), "record key is not UTF-8"),
        (with_value(b'{"name": "\\u0000"}'), "U\\+0000, which cannot be stored"),
        (with_value(b'{"name": "\\ud800"}'), "U\\+D800, which cannot be stored"),
        (with_value(b'{"\\udfff": 1}'), "U\\+DFFF"),
        (with_value(b'{"a": [{"b": ["\\u0000"]}]}'), "U\\+0000"),
        (with_value(b'{"a": NaN}'), "not JSON"),
        (with_value(b'{"a": -Infinity}'), "not JSON"),
        (with_value(b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
        (with_value(b'{"a": ' + b"9" * 5000 + b"}"), "not JSON"),
        (with_value('{"a": 1}'.encode("utf-16")), "value is not UTF-8"),
        (with_value(b'{"a": "\xff"}'), "value is not UTF-8"),
    ],
)
def test_hostile_attributes_and_data_are_malformed_never_another_error(
    record: tuple[bytes, bytes, list[tuple[str, bytes]]], message: str
) -> None:
    """CloudEvents 1.0 strings carry no control characters, noncharacters or surrogates;
    event data must be JSON that PostgreSQL can store. Anything else is an EnvelopeError
    (a dead letter), never another exception that would stop the consumer."""
    with pytest.raises(EnvelopeError, match=message):
        Envelope.from_record(*record)


def test_an_id_of_any_length_and_any_allowed_character_is_accepted() -> None:
    long_id = "事件-" * 50_000 + "\U0001f600"
    key, value, headers = sample(
        id=long_id, data={"note": "tab\tand\nnewline are data"}
    ).to_record()
    parsed = Envelope.from_record(key, value, headers)
    assert parsed.id == long_id
    assert parsed.data == {"note": "tab\tand\nnewline are data"}
