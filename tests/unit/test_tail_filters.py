"""Operator commands' pure parts: record views, tail filters, the time-order merge buffer,
masked rendering, dead-letter and lag helpers, and argument checks that need no broker."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import TopicPartition
from typer.testing import CliRunner

from contracts.events import BUNDLE_TOPIC, CASE_TOPICS, ReplayRecord
from services.cli.main import app
from services.cli.ops.dlq import LetterFilters, letter_matches, parse_ref, refusal
from services.cli.ops.events import EventView, parse_when, view_of
from services.cli.ops.filters import FilterError, check_filters, facts_of_view, select
from services.cli.ops.lag import chosen_groups, compute_lag, service_of, totals
from services.cli.ops.merge import SortedBacklog, TimeMergeBuffer
from services.cli.ops.render import event_json, event_line, json_line
from services.cli.ops.tail import TailOptions
from services.common.city import CITY_TZ
from services.common.envelope import Envelope
from services.operators.dead_letters import DeadLetter
from services.operators.event_facts import CaseMemory, EventFilter, status_after
from services.policy.catalog_index import CatalogIndex
from tests.unit import catalog_data

pytestmark = pytest.mark.unit

ID_NUMBER = catalog_data.resident_id()
PHONE = "13812345678"
NAME = "王小明"


@dataclass
class FakeRecord:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def record(
    event_type: str,
    data: dict[str, Any],
    *,
    case_id: str = "T-20260615-AAAAAAAAAA",
    topic: str = "case.routing.v1",
    partition: int = 0,
    offset: int = 0,
    ts: int = 1_750_000_000_000,
    handledby: str | None = None,
    extra_headers: list[tuple[str, bytes]] | None = None,
) -> FakeRecord:
    key, value, headers = Envelope(
        type=event_type,
        source="/tongban/test",
        subject=case_id,
        data={"case_id": case_id, **data},
        handledby=handledby,
    ).to_record()
    return FakeRecord(topic, partition, offset, ts, key, value, headers + (extra_headers or []))


def application(office: str | None = "T11-SC", division: str = "T11") -> dict[str, Any]:
    return {
        "item_code": "SOC-1",
        "channel": "counter",
        "office_code": office,
        "applicant": {
            "category": "individual",
            "name": NAME,
            "id_number": ID_NUMBER,
            "phone": PHONE,
            "division_code": division,
        },
        "materials": [],
        "delivery": {"method": "postal", "address": "一区某路1号"},
    }


def route(path: str = "delegated", dept: str = "T1-MKT", office: str = "T1-DC") -> dict[str, Any]:
    return {"path": path, "level": "district", "handled_by": dept, "intake_office": office}


@pytest.fixture(scope="module")
def catalog() -> CatalogIndex:
    return catalog_data.index()


# -- record views --------------------------------------------------------------------------------


def test_view_of_a_cloudevent() -> None:
    view = view_of(record("gov.case.routed.v1", {"route": route()}, handledby="T1-MKT"))
    assert view.error is None
    assert view.type == "gov.case.routed.v1"
    assert view.case_id == "T-20260615-AAAAAAAAAA"
    assert view.headers["ce_handledby"] == "T1-MKT"
    assert view.time.utcoffset() == timedelta(hours=8)
    assert view.coordinates == "case.routing.v1/0@0"


@pytest.mark.parametrize(
    ("value", "headers", "problem"),
    [
        (b"\xff not json", [("ce_type", b"x")], "not JSON"),
        (b"[1, 2]", [("ce_type", b"x")], "not an object"),
        (b"{}", [], "no ce_type"),
        (None, [("ce_type", b"x")], "tombstone"),
    ],
)
def test_view_of_a_poison_record(
    value: bytes | None, headers: list[tuple[str, bytes]], problem: str
) -> None:
    view = view_of(FakeRecord("t", 0, 5, 0, b"K", value, headers))
    assert view.error is not None and problem in view.error
    assert view.case_id == "K"


def test_status_after() -> None:
    assert status_after("gov.case.routed.v1") == "routed"
    assert status_after("gov.case.notified.v1") == "awaiting_supplement"
    assert status_after("gov.case.sla_warning.v1") is None


def test_parse_when() -> None:
    assert parse_when("2026-11-29T09:30") == datetime(2026, 11, 29, 9, 30, tzinfo=CITY_TZ)
    assert parse_when("2026-11-29T01:30:00+00:00") == datetime(2026, 11, 29, 1, 30, tzinfo=UTC)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_when("2h", now=now) == now - timedelta(hours=2)
    assert parse_when("90s", now=now) == now - timedelta(seconds=90)
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_when("yesterday")


# -- filters -------------------------------------------------------------------------------------


def test_facts_of_a_view_come_from_its_header_and_data(catalog: CatalogIndex) -> None:
    routed = view_of(
        record("gov.case.routed.v1", {"route": route(office="T2-DC")}, handledby="T1-MKT")
    )
    facts = facts_of_view(routed)
    assert facts.departments == {"T1-MKT"}
    assert facts.offices == {"T2-DC"}
    assert facts.paths == {"delegated"}
    assert facts.districts(catalog) == {"T1", "T2"}


def test_case_memory_follows_a_case_after_the_event_that_named_the_fact(
    catalog: CatalogIndex,
) -> None:
    memory = CaseMemory()
    wanted = EventFilter.of(paths=("delegated",), districts=("T1",))
    submitted = view_of(record("gov.case.submitted.v1", {"application": application()}))
    routed = view_of(record("gov.case.routed.v1", {"route": route()}, handledby="T1-MKT"))
    approved = view_of(record("gov.case.approved.v1", {"department": "T1-MKT"}))
    other = view_of(
        record("gov.case.approved.v1", {"department": "T1-MKT"}, case_id="T-OTHER-CASE")
    )
    assert not select(submitted, wanted, memory=memory, catalog=catalog)  # no path yet
    assert select(routed, wanted, memory=memory, catalog=catalog)
    assert select(approved, wanted, memory=memory, catalog=catalog)  # remembered path
    assert not select(other, wanted, memory=memory, catalog=catalog)  # unknown case
    assert not select(approved, wanted, memory=None, catalog=catalog)  # no memory


def test_a_bundle_filter_follows_the_bundle_and_its_members() -> None:
    """--bundle: the bundle's own events (bundle.v1, subject = bundle id) and every event of
    its members, also one that does not name the bundle once an earlier one of its case did."""
    memory = CaseMemory()
    wanted = EventFilter.of(bundles=("B-1*",))
    bundle_submitted = view_of(
        record(
            "gov.bundle.submitted.v1",
            {"bundle_id": "B-100"},
            case_id="B-100",
            topic=BUNDLE_TOPIC,
        )
    )
    member = view_of(
        record("gov.case.submitted.v1", {"bundle_id": "B-100", "application": application()})
    )
    decision = view_of(record("gov.case.decision.v1", {"decision": "approve"}))  # no bundle_id
    single = view_of(
        record("gov.case.submitted.v1", {"application": application()}, case_id="T-SINGLE")
    )
    other_bundle = view_of(
        record("gov.case.routed.v1", {"bundle_id": "B-200"}, case_id="T-OTHER-MEMBER")
    )
    assert select(bundle_submitted, wanted, memory=memory)
    assert not select(decision, wanted, memory=CaseMemory())  # nothing known of its case
    assert select(member, wanted, memory=memory)
    assert select(decision, wanted, memory=memory)  # remembered from the member's submission
    assert not select(single, wanted, memory=memory)
    assert not select(other_bundle, wanted, memory=memory)
    assert EventFilter.parse(bundle="B-1, B-2").bundles == {"B-1", "B-2"}
    assert facts_of_view(member).view(None)["bundle"] == "B-100"


def test_following_a_bundle_reads_bundle_v1_by_default() -> None:
    plain, explicit = TailOptions().chosen_topics("case.dlq.v1")
    assert plain == list(CASE_TOPICS) and not explicit
    following, _ = TailOptions(filters=EventFilter.of(bundles=("B-1",))).chosen_topics("dlq")
    assert following == [*CASE_TOPICS, BUNDLE_TOPIC]
    named, explicit = TailOptions(
        topics=("case.intake.v1",), filters=EventFilter.of(bundles=("B-1",))
    ).chosen_topics("dlq")
    assert named == ["case.intake.v1"] and explicit
    help_text = CliRunner().invoke(app, ["tail", "--help"]).output
    assert "--bundle" in help_text


def test_filter_values_are_checked(catalog: CatalogIndex) -> None:
    check_filters(EventFilter.of(paths=("online", "entrusted"), districts=("T1",)), catalog)
    with pytest.raises(FilterError, match="unknown path"):
        check_filters(EventFilter.of(paths=("onlin",)))
    with pytest.raises(FilterError, match="needs the catalog"):
        check_filters(EventFilter.of(districts=("T1",)))
    with pytest.raises(FilterError, match="unknown district"):
        check_filters(EventFilter.of(districts=("T11",)), catalog)  # a street, not a district


# -- time-order merge ----------------------------------------------------------------------------


def test_merge_orders_records_that_arrive_out_of_order_within_the_delay() -> None:
    buffer: TimeMergeBuffer[str] = TimeMergeBuffer(delay=0.5)
    buffer.push("p0-t30", key=30, now=0.0)
    buffer.push("p1-t10", key=10, now=0.1)
    buffer.push("p2-t20", key=20, now=0.2)
    assert buffer.pop_ready(0.55) == []  # the oldest (t10) arrived at 0.1: due at 0.6
    assert buffer.next_due(0.55) == pytest.approx(0.05)
    assert buffer.pop_ready(0.6) == ["p1-t10"]
    assert buffer.pop_ready(0.7) == ["p2-t20", "p0-t30"]
    # More than `delay` late: printed as soon as due, after newer ones (documented limit).
    buffer.push("p1-t25", key=25, now=0.7)
    assert buffer.pop_ready(1.2) == ["p1-t25"]
    assert len(buffer) == 0 and buffer.next_due(2.0) is None


def test_merge_flush_returns_everything_in_time_order() -> None:
    buffer: TimeMergeBuffer[int] = TimeMergeBuffer(delay=10)
    for i, ts in enumerate([50, 10, 40, 20, 30, 10]):
        buffer.push(ts * 100 + i, key=(ts, i), now=0.0)
    assert [x // 100 for x in buffer.flush()] == [10, 10, 20, 30, 40, 50]


def test_merge_delay_zero_releases_at_once_and_negative_is_refused() -> None:
    buffer: TimeMergeBuffer[str] = TimeMergeBuffer(delay=0)
    buffer.push("x", key=1, now=5.0)
    assert buffer.pop_ready(5.0) == ["x"]
    with pytest.raises(ValueError):
        TimeMergeBuffer(delay=-1)


@pytest.mark.parametrize("run_size", [1, 7, 1000])
def test_sorted_backlog_gives_exact_order_in_memory_and_spilled(run_size: int) -> None:
    keys = random.Random(13).sample(range(100_000), 500)
    with SortedBacklog[tuple[int, str]](lambda item: item[0], run_size=run_size) as backlog:
        for key in keys:
            backlog.add((key, f"v{key}"))
        assert len(backlog) == 500
        assert backlog.spilled_runs == 500 // run_size
        assert list(backlog.drain()) == [(k, f"v{k}") for k in sorted(keys)]
        assert len(backlog) == 0 and backlog.spilled_runs == 0


def test_views_order_by_event_time_then_coordinates() -> None:
    def at(ce_time: bytes | None, *, topic: str, offset: int, ts: int) -> EventView:
        made = record("gov.case.routed.v1", {}, topic=topic, offset=offset, ts=ts)
        made.headers = [(k, v) for k, v in made.headers if k != "ce_time"]
        if ce_time is not None:
            made.headers.append(("ce_time", ce_time))
        return view_of(made)

    late_record = at(b"2026-06-15T08:00:00.000001Z", topic="b", offset=0, ts=9_000_000_000_000)
    early = at(b"2026-06-15T16:00:00+08:00", topic="c", offset=5, ts=1)
    same_time = at(b"2026-06-15T08:00:00Z", topic="a", offset=9, ts=1)
    unreadable = at(b"yesterday", topic="a", offset=1, ts=1_781_510_399_000)  # 08:00 - 1 s
    missing = at(None, topic="a", offset=2, ts=1_781_510_399_000)
    views = [late_record, early, same_time, unreadable, missing]
    ordered = sorted(views, key=lambda v: v.sort_key)
    assert ordered == [unreadable, missing, same_time, early, late_record]
    assert early.time.isoformat() == "2026-06-15T16:00:00+08:00"
    assert unreadable.time.isoformat() == "2026-06-15T15:59:59+08:00"  # the record's timestamp


# -- rendering and masking -----------------------------------------------------------------------


def _no_personal_data(text: str) -> None:
    assert ID_NUMBER not in text
    assert PHONE not in text
    assert NAME not in text
    assert "某路" not in text


def test_lines_and_json_lines_mask_personal_data() -> None:
    view = view_of(
        record(
            "gov.case.approved.v1",
            {
                "application": application(),
                "applicant_name": NAME,
                "applicant_id_number": ID_NUMBER,
                "delivery_address": "一区某路1号",
                "reason": f"call {PHONE} about {ID_NUMBER}",
                "department": "T1-MKT",
            },
            topic="case.approval.v1",
        )
    )
    line = event_line(view).plain
    _no_personal_data(line)
    assert "approved" in line and "status=approved" in line and "dept=T1-MKT" in line
    assert "T-20260615-AAAAAAAAAA" in line and "[case.approval.v1/0@0]" in line
    text = json_line(view)
    _no_personal_data(text)
    body = json.loads(text)
    assert body["data"]["application"]["applicant"]["id_number"] == (
        ID_NUMBER[:4] + "*" * 10 + ID_NUMBER[-4:]
    )
    assert body["data"]["applicant_id_number"].startswith(ID_NUMBER[:4] + "****")
    assert body["data"]["application"]["applicant"]["phone"] == "138****5678"
    assert body["data"]["applicant_name"] == "王**"
    assert body["headers"]["ce_type"] == "gov.case.approved.v1"
    assert body["time"].endswith("+08:00")


def test_dead_letter_and_poison_lines_are_masked() -> None:
    dead = view_of(
        record(
            "gov.case.decision.v1",
            {"department": "T1-MKT"},
            topic="case.dlq.v1",
            extra_headers=[
                ("dlq_reason", f"handler failed: {ID_NUMBER} {PHONE}".encode()),
                ("dlq_source", b"approval/approval-decisions"),
                ("dlq_topic", b"case.decisions.v1"),
                ("dlq_partition", b"2"),
                ("dlq_offset", b"7"),
            ],
        )
    )
    line = event_line(dead).plain
    assert "dead:decision" in line and "from=case.decisions.v1/2@7" in line
    _no_personal_data(line)
    _no_personal_data(json_line(dead))
    poison = view_of(FakeRecord("case.intake.v1", 1, 3, 0, None, f"{ID_NUMBER},{PHONE}".encode()))
    assert "unreadable" in event_line(poison).plain
    body = event_json(poison)
    assert body["data"] is None and "error" in body
    _no_personal_data(json.dumps(body, ensure_ascii=False))


# -- dead letters --------------------------------------------------------------------------------


def letter(**headers: str) -> DeadLetter:
    base = record("gov.case.decision.v1", {"department": "T1-MKT"}, topic="case.dlq.v1", offset=4)
    extra = [(k, v.encode()) for k, v in headers.items()]
    return DeadLetter.of(FakeRecord(**{**vars(base), "headers": base.headers + extra}))


def test_dead_letter_reads_its_headers() -> None:
    dead = letter(
        dlq_reason="rejected: wrong_department",
        dlq_source="approval/approval-decisions",
        dlq_topic="case.decisions.v1",
        dlq_partition="2",
        dlq_offset="7",
    )
    assert dead.ref == "0:4"
    assert (dead.original_topic, dead.original_partition, dead.original_offset) == (
        "case.decisions.v1",
        2,
        7,
    )
    assert dead.event_type == "gov.case.decision.v1"
    assert all(not k.startswith("dlq_") for k, _ in dead.original_headers())
    assert dead.envelope_problem() is None
    assert letter_matches(dead, LetterFilters(reason="WRONG_dep", types=("decision",)))
    assert not letter_matches(dead, LetterFilters(reason="timeout"))
    assert not letter_matches(dead, LetterFilters(since=datetime.now(UTC)))


def test_replay_refusals() -> None:
    good = letter(dlq_topic="case.decisions.v1", dlq_reason="x")
    assert refusal(good, [], force=False) is None
    earlier = ReplayRecord(
        dlq_topic="case.dlq.v1",
        dlq_partition=0,
        dlq_offset=4,
        original_topic="case.decisions.v1",
        original_partition=None,
        original_offset=None,
        event_id="e",
        event_type=None,
        case_id=None,
        replayed_to_partition=0,
        replayed_to_offset=1,
        replayed_at=datetime.now(UTC),
        operator="ops-li",
    )
    assert "already replayed 1x" in (refusal(good, [earlier], force=False) or "")
    assert "ops-li" in (refusal(good, [earlier], force=False) or "")
    assert refusal(good, [earlier], force=True) is None
    assert "original topic" in (refusal(letter(dlq_reason="x"), [], force=True) or "")
    poison = DeadLetter.of(
        FakeRecord("case.dlq.v1", 0, 1, 0, None, b"nope", [("dlq_topic", b"case.intake.v1")])
    )
    assert "not a valid CloudEvent" in (refusal(poison, [], force=False) or "")
    assert refusal(poison, [], force=True) is None


def test_parse_ref() -> None:
    assert parse_ref("3:17", partitions=12) == (3, 17)
    assert parse_ref("17", partitions=1) == (0, 17)
    with pytest.raises(ValueError, match="ambiguous"):
        parse_ref("17", partitions=12)
    with pytest.raises(ValueError, match="PARTITION:OFFSET"):
        parse_ref("3-17", partitions=12)


# -- lag -----------------------------------------------------------------------------------------


def test_lag_rows_and_totals() -> None:
    t0, t1, t2 = (TopicPartition("case.intake.v1", p) for p in range(3))
    rows = compute_lag(
        "routing-intake", {t0: 5, t1: -1}, begins={t0: 0, t1: 2, t2: 1}, ends={t0: 9, t1: 4, t2: 1}
    )
    assert [(r.partition, r.committed, r.end, r.lag) for r in rows] == [
        (0, 5, 9, 4),
        (1, None, 4, 2),  # never committed: everything kept is unread
        (2, None, 1, 0),
    ]
    assert totals(rows) == {("routing-intake", "case.intake.v1"): 6}
    assert rows[0].as_dict()["service"] == "routing"


def test_which_groups_are_tongban_services() -> None:
    groups = ["routing-intake", "intake-timeline", "console-x", "approval-decisions", "other"]
    assert service_of("delivery-approval") == "delivery"
    assert service_of("deliveryman") is None
    assert chosen_groups(groups) == ["approval-decisions", "intake-timeline", "routing-intake"]
    assert chosen_groups(groups, everything=True) == sorted(groups)
    assert chosen_groups(groups, names=["other", "missing"]) == ["other"]


# -- arguments (refused before any broker is contacted) ------------------------------------------

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tail", "--from-beginning", "--from-offset", "3"], "choose one of"),
        (["tail", "--from-time", "last tuesday"], "ISO 8601"),
        (["tail", "--path", "teleport"], "unknown path"),
        (["tail", "--max", "0"], "--max"),
        (["dlq", "replay"], "--all-matching"),
        (["dlq", "replay", "0:1", "--all-matching"], "--all-matching"),
        (["dlq", "replay", "0:1", "--reason", "x"], "filters go with --all-matching"),
        (["dlq", "list", "--since", "soon"], "ISO 8601"),
    ],
)
def test_bad_arguments_are_refused(args: list[str], message: str) -> None:
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_unknown_district_is_refused_with_the_catalog_file(tmp_path: Any) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(catalog_data.base_catalog()), encoding="utf-8")
    result = runner.invoke(app, ["tail", "--district", "T9", "--catalog", str(catalog)])
    assert result.exit_code == 2
    assert "unknown district" in result.output


@pytest.mark.parametrize(
    "command", [[], ["tail"], ["lag"], ["dlq"], ["dlq", "list"], ["dlq", "show"], ["dlq", "replay"]]
)
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
