"""The operator console's pure parts: filters, what it learns about cases, masking, SSE lines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from contracts.events import APPROVAL_TOPIC, DELIVERY_TOPIC, DLQ_TOPIC, INTAKE_TOPIC, ROUTING_TOPIC
from services.common.envelope import Envelope
from services.console.app import ConsoleSettings, create_app
from services.console.events import (
    CaseFacts,
    Facts,
    StreamFilter,
    facts_of_case_view,
    facts_of_event,
    family,
    mask_event_data,
    short_type,
)
from services.console.stream import CaseLookup, LiveStream, sse
from tests.unit.catalog_data import application, index

pytestmark = pytest.mark.unit

CASE = "T-20260615-0000000001"
ID_NUMBER = "11010519491231002X"


def _application(**kwargs: Any) -> dict[str, Any]:
    return application("DEL-D", **kwargs).model_dump(mode="json")


def submitted(case_id: str = CASE, office: str = "T1-DC", division: str = "T11") -> dict[str, Any]:
    return {
        "case_id": case_id,
        "application": _application(office=office, division=division),
        "submitted_at": "2026-06-15T10:00:00+08:00",
    }


def routed(
    case_id: str = CASE, department: str = "T1-MKT", path: str = "delegated"
) -> dict[str, Any]:
    return {
        **submitted(case_id),
        "route": {"path": path, "handled_by": department, "rule": "R5", "level": "district"},
    }


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp: int = 0


def record(topic: str, event_type: str, data: dict[str, Any], offset: int = 0) -> Record:
    envelope = Envelope(type=event_type, source="/tongban/test", subject=data["case_id"], data=data)
    key, value, headers = envelope.to_record()
    return Record(topic, 0, offset, key, value, headers)


def test_short_type_and_family() -> None:
    assert short_type("gov.case.closed.v1") == "closed"
    assert short_type("gov.case.route_failed.v1") == "route_failed"
    assert short_type("weird") == "weird"
    assert family(INTAKE_TOPIC, "gov.case.submitted.v1") == "intake"
    assert family(ROUTING_TOPIC, "gov.case.route_failed.v1") == "alert"
    assert family(APPROVAL_TOPIC, "gov.case.sla_warning.v1") == "warning"
    assert family(DLQ_TOPIC, "gov.case.submitted.v1") == "dlq"


def test_every_personal_field_is_masked() -> None:
    data = {
        "case_id": CASE,
        "application": {
            "applicant": {"name": "张三丰", "id_number": ID_NUMBER, "phone": "13812341234"},
            "delivery": {"method": "postal", "address": "测试市某路1号"},
        },
        "applicant_name": "张三丰",
        "applicant_id_number": ID_NUMBER,
        "delivery_address": "测试市某路1号",
        "contact_phone": "13912345678",
        "reason": f"call 13812341234 about {ID_NUMBER}",
    }
    text = json.dumps(mask_event_data(data), ensure_ascii=False)
    for secret in ("张三丰", ID_NUMBER, "13812341234", "13912345678", "测试市某路1号"):
        assert secret not in text, secret
    assert CASE in text


def test_filters_parse_lists_and_short_types() -> None:
    filters = StreamFilter.parse(type="closed, gov.case.routed.v1", case="", office="A,B")
    assert filters.types == {"closed", "gov.case.routed.v1"}
    assert filters.cases == frozenset() and filters.offices == {"A", "B"}
    for event_type, expected in (
        ("gov.case.closed.v1", True),
        ("gov.case.routed.v1", True),
        ("gov.case.accepted.v1", False),
    ):
        assert (
            filters.matches(
                case_id=CASE,
                event_type=event_type,
                facts=Facts(offices={"A"}, channel="counter"),
                catalog=None,
            )
            is expected
        )
    assert StreamFilter.parse(case=CASE).describe() == {"case": [CASE]}
    globs = StreamFilter.parse(case="T-20260615-*", type="sla_*,gov.case.over*")
    for event_type, case_id, expected in (
        ("gov.case.sla_warning.v1", CASE, True),
        ("gov.case.overdue.v1", CASE, True),
        ("gov.case.closed.v1", CASE, False),
        ("gov.case.overdue.v1", "T-20260616-0000000001", False),
    ):
        assert (
            globs.matches(case_id=case_id, event_type=event_type, facts=None, catalog=None)
            is expected
        )


def test_facts_learned_from_earlier_events_answer_later_ones() -> None:
    catalog = index()
    facts = CaseFacts()
    facts.learn(CASE, facts_of_event(submitted()))
    by_department = StreamFilter.parse(department="T1-MKT")
    by_district = StreamFilter.parse(district="T1")
    assert not by_department.matches(
        case_id=CASE, event_type="x", facts=facts.get(CASE), catalog=catalog
    )  # not routed yet
    assert by_district.matches(case_id=CASE, event_type="x", facts=facts.get(CASE), catalog=catalog)
    facts.learn(CASE, facts_of_event(routed()))
    closed = facts.learn(CASE, facts_of_event({"case_id": CASE, "outcome": "approved"}))
    assert closed.departments == {"T1-MKT"} and closed.path == "delegated"
    assert closed.offices == {"T1-DC"} and closed.districts(catalog) == {"T1"}
    for filters, expected in (
        (by_department, True),
        (StreamFilter.parse(path="delegated"), True),
        (StreamFilter.parse(path="online"), False),
        (StreamFilter.parse(office="T1-DC"), True),
        (StreamFilter.parse(office="T2-DC"), False),
        (StreamFilter.parse(district="T2"), False),
        (StreamFilter.parse(district="T2,T1"), True),
    ):
        assert (
            filters.matches(case_id=CASE, event_type="x", facts=closed, catalog=catalog) is expected
        ), filters


def test_a_case_taken_in_one_district_and_decided_in_another_touches_both() -> None:
    catalog = index()
    facts = facts_of_event(routed(department="T2-MKT"))
    facts.merge(facts_of_event({"case_id": CASE, "department": "T2-MKT"}, handledby="T2-MKT"))
    assert facts.districts(catalog) == {"T1", "T2"}
    assert facts.districts(None) == set()  # no catalog yet: the district filter cannot match


def test_facts_are_bounded() -> None:
    facts = CaseFacts(max_cases=2)
    for n in range(3):
        facts.learn(f"c{n}", Facts(offices={"A"}))
    assert len(facts) == 2 and facts.get("c0") is None


def test_intake_view_gives_the_facts_of_a_case_seen_halfway() -> None:
    view = {
        "case_id": CASE,
        "channel": "online",
        "office_code": None,
        "route": {"path": "online", "handled_by": "M-HOU"},
        "applicant": {"division_code": "T21"},
    }
    facts = facts_of_case_view(view)
    assert facts.offices == {"online"} and facts.path == "online"
    assert facts.departments == {"M-HOU"} and facts.divisions == {"T21"}
    filters = StreamFilter.parse(department="M-HOU")
    assert filters.missing_facts(None) and filters.missing_facts(Facts(departments={"M-HOU"}))
    assert not filters.missing_facts(facts)
    assert not StreamFilter.parse(case=CASE).missing_facts(None)


async def test_live_stream_filters_masks_and_asks_intake_only_when_needed() -> None:
    asked: list[str] = []

    async def fetch(case_id: str) -> dict[str, Any] | None:
        asked.append(case_id)
        if case_id == "HALFWAY":
            return {"case_id": case_id, "channel": "counter", "office_code": "T2-DC",
                    "route": {"path": "municipal", "handled_by": "M-HOU"},
                    "applicant": {"division_code": "T21"}}  # fmt: skip
        return None

    catalog = index()
    live = LiveStream(
        StreamFilter.parse(office="T1-DC"),
        facts=CaseFacts(),
        lookup=CaseLookup(fetch),
        catalog=lambda: catalog,
    )
    first = await live.line(record(INTAKE_TOPIC, "gov.case.submitted.v1", submitted()))
    assert first is not None and first["case_id"] == CASE and first["family"] == "intake"
    assert first["facts"]["offices"] == ["T1-DC"] and first["facts"]["districts"] == ["T1"]
    assert "申请人" not in json.dumps(first["data"], ensure_ascii=False)
    closed = await live.line(
        record(DELIVERY_TOPIC, "gov.case.closed.v1", {"case_id": CASE, "outcome": "approved"}, 1)
    )
    assert closed is not None and closed["short_type"] == "closed"
    assert asked == []  # the stream saw the case's application itself
    other = await live.line(record(INTAKE_TOPIC, "gov.case.submitted.v1", submitted("B", "T2-DC")))
    assert other is None and asked == []
    halfway = await live.line(
        record(DELIVERY_TOPIC, "gov.case.closed.v1", {"case_id": "HALFWAY", "outcome": "approved"})
    )
    assert halfway is None and asked == ["HALFWAY"]  # taken at T2-DC, says intake
    await live.line(
        record(DELIVERY_TOPIC, "gov.case.rated.v1", {"case_id": "HALFWAY", "rating": "satisfied"})
    )
    assert asked == ["HALFWAY"]  # learned once


async def test_unreadable_records_are_shown_not_dropped() -> None:
    async def fetch(case_id: str) -> dict[str, Any] | None:
        return None

    live = LiveStream(
        StreamFilter(), facts=CaseFacts(), lookup=CaseLookup(fetch), catalog=lambda: None
    )
    poison = Record(
        DLQ_TOPIC,
        3,
        7,
        CASE.encode(),
        f"not json {ID_NUMBER}".encode(),
        [("dlq_reason", f"bad value for {ID_NUMBER}".encode()), ("dlq_source", b"routing/x")],
    )
    line = await live.line(poison)
    assert line is not None and line["family"] == "dlq" and line["type"] is None
    assert line["id"] == f"{DLQ_TOPIC}/3/7" and line["dlq"]["source"] == "routing/x"
    assert ID_NUMBER not in json.dumps(line)
    typed = LiveStream(
        StreamFilter.parse(type="closed"),
        facts=CaseFacts(),
        lookup=CaseLookup(fetch),
        catalog=lambda: None,
    )
    assert await typed.line(poison) is None


def test_sse_message_shape() -> None:
    message = sse({"a": "通办\n"}, event="ready", event_id="x/1/2")
    assert message == 'event: ready\nid: x/1/2\ndata: {"a": "通办\\n"}\n\n'


def test_a_console_token_is_required_outside_dev() -> None:
    with pytest.raises(ValidationError, match="TONGBAN_CONSOLE_TOKEN"):
        ConsoleSettings(environment="production")
    assert ConsoleSettings(environment="production", console_token="t").console_token is not None
    assert ConsoleSettings(environment="dev").console_token is None


async def test_the_page_is_served_with_a_strict_content_policy() -> None:
    # ASGITransport does not run the lifespan: no Kafka, no upstream calls.
    transport = httpx.ASGITransport(app=create_app(ConsoleSettings(environment="test")))
    async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
        page = await client.get("/")
        assert page.status_code == 200 and 'type="module" src="/console.js"' in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        script = await client.get("/console.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert "http://" not in script.text and "https://" not in script.text  # nothing fetched
        refused = await client.get("/api/stream", params={"from": "not a time"})
        assert refused.status_code == 422 and refused.json()["code"]
        assert (await client.get("/api/cases/bad%20id")).status_code == 422
