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
