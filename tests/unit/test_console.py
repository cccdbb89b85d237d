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
from services.console.links import LinkSeen, NewestRecord, PartnerCity, link_row, partner_aliases
from services.console.routes import case_view
from services.console.state import Console
from services.console.stream import CaseLookup, LiveStream, sse
from services.operators.event_facts import CaseMemory, EventFilter, facts_of
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


# -- across regions (跨省通办, DESIGN.md §9) -----------------------------------------------------


def partner_aware_stream(filters: EventFilter, own_city: str | None = "T") -> LiveStream:
    """A live stream of region `own_city` that knows one partner region, LZ 澜州市, and asks
    intake nothing."""

    async def nothing_at_intake(case_id: str) -> dict[str, Any] | None:
        return None

    return LiveStream(
        filters,
        facts=CaseMemory(),
        lookup=CaseLookup(nothing_at_intake),
        catalog=lambda: None,
        partner_names=lambda: {"LZ": "澜州市"},
        own_city=lambda: own_city,
    )


async def test_the_stream_marks_cases_across_regions_with_the_partner_city() -> None:
    """Origin side: routed on path cross_region to the partner; handling side: submitted with
    `origin`, and the origin's steps imported with ce_fromcity (which alone name the partner)."""

    live = partner_aware_stream(EventFilter.parse(path="cross_region"))
    forwarded = {
        **submitted("ORIGIN-1"),
        "route": {"path": "cross_region", "handled_by": "LZ", "rule": "R2-cross-region",
                  "level": "partner"},
    }  # fmt: skip
    line = await live.line(record(ROUTING_TOPIC, "gov.case.routed.v1", forwarded))
    assert line is not None
    assert line["cross_region"] == {"role": "origin", "partner": "LZ", "partner_name": "澜州市"}
    assert line["facts"]["partner"] == "LZ" and line["facts"]["path"] == "cross_region"
    assert "cross_region -> LZ" in line["summary"]
    closed = await live.line(
        record(DELIVERY_TOPIC, "gov.case.closed.v1", {"case_id": "ORIGIN-1", "outcome": "approved"})
    )
    assert closed is not None and closed["cross_region"]["role"] == "origin"  # remembered
    local = await live.line(record(ROUTING_TOPIC, "gov.case.routed.v1", routed("LOCAL-1")))
    assert local is None  # path filter: not across regions

    everything = partner_aware_stream(EventFilter())
    plain = await everything.line(record(ROUTING_TOPIC, "gov.case.routed.v1", routed()))
    assert plain is not None and plain["cross_region"] is None
    adopted = {
        **submitted("ADOPTED-1"),
        "origin": {"city_code": "LZ", "office_code": "LZ01-DC", "catalog_version": 3,
                   "forwarded_at": "2026-06-15T10:00:00+08:00"},
    }  # fmt: skip
    line = await everything.line(record(INTAKE_TOPIC, "gov.case.submitted.v1", adopted))
    assert line is not None
    assert line["cross_region"] == {"role": "handler", "partner": "LZ", "partner_name": "澜州市"}
    assert "adopted from LZ (LZ01-DC)" in line["summary"]
    # An origin's step imported here names its region only in ce_fromcity.
    envelope = Envelope(
        type="gov.case.withdrawn.v1",
        source="/tongban/intake",
        subject="ADOPTED-2",
        data={"case_id": "ADOPTED-2", "reason": "申请人撤回"},
        fromcity="QZ",
    )
    imported = await everything.line(Record(INTAKE_TOPIC, 0, 9, *envelope.to_record()))
    assert imported is not None
    assert imported["cross_region"] == {"role": "handler", "partner": "QZ", "partner_name": None}


def test_link_rows_age_the_newest_heartbeat_and_forwarded_record() -> None:
    now = 1_800_000_000_000
    partner = PartnerCity("LZ", "澜州市", 4)
    up = link_row(
        LinkSeen("region2", NewestRecord(900, now - 1_500), NewestRecord(12, now - 95_000)),
        now_ms=now,
        partner=partner,
        stale_after_s=30,
    )
    assert up == {
        "alias": "region2",
        "partner": {"code": "LZ", "name": "澜州市", "version": 4},
        "status": "up",
        "heartbeat_topic": "region2.heartbeats",
        "heartbeat_age_s": 1.5,
        "xregion_topic": "region2.xregion.out.v1",
        "xregion_records": 12,
        "xregion_newest_age_s": 95.0,
    }
    stale = link_row(
        LinkSeen("region2", NewestRecord(900, now - 30_100), None),
        now_ms=now,
        partner=None,
        stale_after_s=30,
    )
    assert (stale["status"], stale["partner"], stale["xregion_records"]) == ("stale", None, None)
    never = link_row(
        LinkSeen("region3", None, NewestRecord(0, None)), now_ms=now, partner=None, stale_after_s=30
    )
    assert (never["status"], never["heartbeat_age_s"], never["xregion_newest_age_s"]) == (
        "no_heartbeat",
        None,
        None,
    )
    # a partner clock a little ahead is no negative age
    ahead = link_row(
        LinkSeen("region2", NewestRecord(1, now + 400), None),
        now_ms=now,
        partner=None,
        stale_after_s=30,
    )
    assert ahead["heartbeat_age_s"] == 0 and ahead["status"] == "up"


def test_partner_aliases_are_the_sources_of_mirrored_link_topics_one_hop_away() -> None:
    topics = [
        "region2.heartbeats",
        "region2.xregion.out.v1",
        "region2.catalog.v1",
        "region3.catalog.v1",
        "heartbeats",  # this region's own MirrorMaker's
        "region3.region2.heartbeats",  # two links away
        "region2.checkpoints.internal",
        "xregion.out.v1",
        "case.intake.v1",
    ]
    assert partner_aliases(topics) == {
        "region2": frozenset({"heartbeats", "xregion.out.v1", "catalog.v1"}),
        "region3": frozenset({"catalog.v1"}),
    }


async def test_the_case_page_marks_a_case_across_regions_from_intake_or_the_stream() -> None:
    """`/api/cases/{id}` adds `cross_region`: from intake's route (origin side), or from what
    the stream showed of the case (an adopted case, handling side), else null."""
    views = {
        "ORIGIN-1": {"case_id": "ORIGIN-1", "status": "accepted", "channel": "counter",
                     "route": {"path": "cross_region", "handled_by": "LZ", "level": "partner"}},
        "ADOPTED-1": {"case_id": "ADOPTED-1", "status": "accepted", "channel": "counter",
                      "route": {"path": "municipal", "handled_by": "T-MKT", "level": "municipal"}},
        "LOCAL-1": {"case_id": "LOCAL-1", "status": "closed", "channel": "online",
                    "route": {"path": "online", "handled_by": "T-MKT", "level": "municipal"}},
    }  # fmt: skip

    def intake(request: httpx.Request) -> httpx.Response:
        case_id = request.url.path.rsplit("/", 1)[-1]
        if request.url.path.startswith("/v1/cases/") and case_id in views:
            return httpx.Response(200, json=views[case_id])
        return httpx.Response(404, json={"code": "not_found"})

    console = Console(ConsoleSettings(environment="test"))
    console.http = httpx.AsyncClient(transport=httpx.MockTransport(intake))
    console.facts.learn("ADOPTED-1", facts_of({"origin": {"city_code": "LZ"}}))
    try:
        shown = {c: json.loads(bytes((await case_view(c, console)).body)) for c in views}
    finally:
        await console.http.aclose()
    assert shown["ORIGIN-1"]["cross_region"] == {
        "role": "origin",
        "partner": "LZ",
        "partner_name": None,  # no partner catalog read yet
    }
    assert shown["ADOPTED-1"]["cross_region"]["role"] == "handler"
    assert shown["LOCAL-1"]["cross_region"] is None


def from_partner(event_type: str, data: dict[str, Any], *, tocity: str, offset: int = 0) -> Record:
    """A record partner LZ addressed to `tocity`, as MirrorMaker brings it here."""
    envelope = Envelope(
        type=event_type,
        source="/tongban/routing",
        subject=data["case_id"],
        data=data,
        tocity=tocity,
        fromcity="LZ",
    )
    return Record("region2.xregion.out.v1", 0, offset, *envelope.to_record())


async def test_the_stream_shows_what_a_partner_addresses_here_and_nothing_else() -> None:
    live = partner_aware_stream(EventFilter(), own_city="YZ")
    forwarded = {"case_id": "FWD-1", "from_city": "LZ", "to_city": "YZ",
                 "application": _application(office="T1-DC")}  # fmt: skip
    line = await live.line(from_partner("gov.case.forwarded.v1", forwarded, tocity="YZ"))
    assert line is not None and line["family"] == "partner"
    assert line["cross_region"] == {"role": "handler", "partner": "LZ", "partner_name": "澜州市"}
    assert line["source"] == "LZ:/tongban/routing"
    assert "forwarded LZ -> YZ" in line["summary"]
    assert "申请人" not in json.dumps(line["data"], ensure_ascii=False)  # masked as any line
    # a partner's link to a third region carries that region's cases: never shown here
    elsewhere = {**forwarded, "case_id": "FWD-2", "to_city": "QZ"}
    assert await live.line(from_partner("gov.case.forwarded.v1", elsewhere, tocity="QZ")) is None
    # this region's own city not known yet: nothing from partners
    unsure = partner_aware_stream(EventFilter(), own_city=None)
    assert await unsure.line(from_partner("gov.case.forwarded.v1", forwarded, tocity="YZ")) is None

    # The origin's view of a case it forwarded: the partner's events (its adopted submitted
    # names this region as the origin) never turn this region into the handler.
    taken_here = {
        **submitted("ORIGIN-2"),
        "route": {"path": "cross_region", "handled_by": "LZ", "rule": "R2-cross-region"},
    }
    await live.line(record(ROUTING_TOPIC, "gov.case.routed.v1", taken_here))
    adopted_there = {**submitted("ORIGIN-2"), "origin": {"city_code": "YZ"}}
    line = await live.line(from_partner("gov.case.submitted.v1", adopted_there, tocity="YZ"))
    assert line is not None and line["cross_region"]["role"] == "origin"
    refused = {"case_id": "ORIGIN-3", "from_city": "LZ", "to_city": "YZ",
               "code": "not_cross_region", "reason": "不在通办范围"}  # fmt: skip
    line = await live.line(from_partner("gov.case.adoption_refused.v1", refused, tocity="YZ"))
    assert line is not None and line["family"] == "alert"
    assert line["cross_region"]["role"] == "origin"
    assert "adoption refused by LZ: not_cross_region" in line["summary"]
