"""The operator console's own parts: families, the live stream, SSE lines, the app's edges.
(The facts, filters and masking it shares with `tongban tail`: test_event_facts.py.)"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from contracts.events import (
    APPROVAL_TOPIC,
    BUNDLE_TOPIC,
    DELIVERY_TOPIC,
    DLQ_TOPIC,
    INTAKE_TOPIC,
    ROUTING_TOPIC,
)
from services.common.envelope import Envelope
from services.console.app import ConsoleSettings, create_app
from services.console.bundles import BundleBoard
from services.console.events import family
from services.console.stream import CaseLookup, LiveStream, sse
from services.operators.event_facts import CaseMemory, EventFilter
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


def test_family() -> None:
    assert family(INTAKE_TOPIC, "gov.case.submitted.v1") == "intake"
    assert family(ROUTING_TOPIC, "gov.case.route_failed.v1") == "alert"
    assert family(APPROVAL_TOPIC, "gov.case.sla_warning.v1") == "warning"
    assert family(DLQ_TOPIC, "gov.case.submitted.v1") == "dlq"


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
        EventFilter.parse(office="T1-DC"),
        facts=CaseMemory(),
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
        EventFilter(), facts=CaseMemory(), lookup=CaseLookup(fetch), catalog=lambda: None
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
        EventFilter.parse(type="closed"),
        facts=CaseMemory(),
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
        assert (await client.get("/api/bundles/bad%20id")).status_code == 422


# -- the bundle board (一件事) ---------------------------------------------------------------------


def bundle_submitted(bundle_id: str = "B-1") -> dict[str, Any]:
    return {
        "bundle_id": bundle_id,
        "bundle_code": "B-SHOP",
        "bundle_name": "开店一件事",
        "lead": "M-MKT",
        "time_limit_days": 15,
        "channel": "counter",
        "office_code": "T1-DC",
        "members": [
            {"case_id": "M-1", "item_code": "ONL-E", "status": "submitted", "after": []},
            {"case_id": "M-2", "item_code": "DEL-D", "status": "waiting", "after": ["M-1"]},
        ],
        "excluded": ["ENT-E"],
        "delivery_method": "counter_pickup",
        "submitted_at": "2026-06-15T10:00:00+08:00",
    }


def test_the_bundle_board_is_one_row_per_bundle_with_its_members() -> None:
    board = BundleBoard()
    # A member's own event may come before the bundle's submission (topics are not ordered).
    board.apply("gov.case.routed.v1", {"case_id": "M-1", "bundle_id": "B-1"}, None)
    board.apply("gov.bundle.submitted.v1", bundle_submitted(), None)
    board.apply("gov.case.submitted.v1", {"case_id": "SINGLE"}, None)  # not a member
    [row] = board.rows()
    assert (row["bundle_id"], row["bundle_code"], row["status"]) == ("B-1", "B-SHOP", "in_progress")
    assert [(m["case_id"], m["status"]) for m in row["members"]] == [
        ("M-1", "routed"),
        ("M-2", "waiting"),
    ]
    assert row["members"][1]["after"] == ["M-1"] and row["excluded"] == ["ENT-E"]
    board.apply("gov.case.approved.v1", {"case_id": "M-1", "bundle_id": "B-1"}, None)
    board.apply("gov.case.withdrawn.v1", {"case_id": "M-2", "bundle_id": "B-1"}, None)
    board.apply("gov.case.submitted.v1", {"case_id": "M-2", "bundle_id": "B-1"}, None)  # late
    board.apply("gov.bundle.sla_warning.v1", {"bundle_id": "B-1"}, None)
    [row] = board.rows()
    assert row["members_done"] == 2 and row["members"][1]["status"] == "withdrawn"
    assert row["alert"] == "sla_warning"
    board.apply(
        "gov.bundle.delivered.v1",
        {
            "bundle_id": "B-1",
            "results": [
                {"case_id": "M-1", "outcome": "approved", "result": {"kind": "licence"}},
                {"case_id": "M-2", "outcome": "withdrawn", "result": None},
            ],
        },
        None,
    )
    assert [m["status"] for m in board.rows()[0]["members"]] == ["delivered", "withdrawn"]
    board.apply("gov.bundle.closed.v1", {"bundle_id": "B-1", "members": ["M-1"]}, None)
    board.apply("gov.bundle.delivered.v1", {"bundle_id": "B-1"}, None)  # after the closing
    board.apply("gov.bundle.rated.v1", {"bundle_id": "B-1", "rating": "satisfied"}, None)
    [row] = board.rows()
    assert (row["status"], row["rating"]) == ("closed", "satisfied")
    assert [m["status"] for m in row["members"]] == ["closed", "withdrawn"]


def test_a_bundle_whose_members_are_all_withdrawn_is_withdrawn_and_the_board_is_bounded() -> None:
    board = BundleBoard(capacity=2)
    board.apply("gov.bundle.submitted.v1", bundle_submitted("B-1"), None)
    board.apply("gov.bundle.withdrawn.v1", {"bundle_id": "B-1", "withdrawn_members": ["M-2"]}, None)
    assert board.rows()[0]["status"] == "in_progress"  # M-1 still goes on
    board.apply("gov.bundle.withdrawn.v1", {"bundle_id": "B-1", "withdrawn_members": ["M-1"]}, None)
    assert board.rows()[0]["status"] == "withdrawn"
    board.apply("gov.bundle.submitted.v1", bundle_submitted("B-2"), None)
    board.apply("gov.bundle.submitted.v1", bundle_submitted("B-3"), None)
    assert [r["bundle_id"] for r in board.rows()] == ["B-3", "B-2"] and len(board) == 2


async def test_the_stream_follows_a_bundle_without_asking_intake_about_it() -> None:
    asked: list[str] = []

    async def fetch(case_id: str) -> dict[str, Any] | None:
        asked.append(case_id)
        return None

    live = LiveStream(
        EventFilter.parse(bundle="B-1"),
        facts=CaseMemory(),
        lookup=CaseLookup(fetch),
        catalog=lambda: None,
    )
    own = Record(BUNDLE_TOPIC, 0, 0, *_bundle_record(bundle_submitted()))
    line = await live.line(own)
    assert line is not None and line["family"] == "bundle" and line["bundle_id"] == "B-1"
    assert asked == []  # a bundle event is not a case intake could be asked about
    member = {**submitted("M-1"), "bundle_id": "B-1"}
    assert await live.line(record(INTAKE_TOPIC, "gov.case.submitted.v1", member)) is not None
    assert await live.line(record(INTAKE_TOPIC, "gov.case.submitted.v1", submitted())) is None
    assert family(BUNDLE_TOPIC, "gov.bundle.overdue.v1") == "alert"


def _bundle_record(data: dict[str, Any]) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    envelope = Envelope(
        type="gov.bundle.submitted.v1",
        source="/tongban/intake",
        subject=data["bundle_id"],
        data=data,
    )
    key, value, headers = envelope.to_record()
    assert key is not None and value is not None
    return key, value, headers
