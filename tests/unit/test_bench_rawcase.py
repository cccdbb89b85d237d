"""The raw case pipeline's pure parts: tongban's case shape, its records, intake's checks and
the rung figures (services/bench/raw_shape.py, services/bench/raw.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from services.bench import raw_shape as shape
from services.bench.loadgen import Answer, LoadResult
from services.bench.raw import step_figures

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
APPLICATION = {
    "item_code": "MKT-0104",
    "channel": "online",
    "office_code": None,
    "applicant": {"name": "吴明杰", "id_number": "110105200102222640", "division_code": "YZ0201"},
    "delivery": {"method": "electronic", "address": None},
    "materials": [{"code": "ID-CARD", "sha256": "0" * 64}],
}
BODY = json.dumps(APPLICATION, ensure_ascii=False).encode()


def test_one_case_is_seven_events_and_ten_applications() -> None:
    case = shape.case_shape()
    assert (case.events, case.applications) == (7, 10)
    assert case.published == {"intake": 1, "routing": 1, "approval": 2, "delivery": 3}
    # the timeline 7; routing-intake; approval-routing; delivery-approval
    assert case.applied == {"intake": 7, "routing": 1, "approval": 1, "delivery": 1}
    # the timeline's own rows are its record: no inbox row
    assert case.inbox_rows == {"intake": 0, "routing": 1, "approval": 1, "delivery": 1}
    # routing-xregion passes over all but the submitted event (after its lookup)
    assert case.skipped == {"intake": 0, "routing": 6, "approval": 4, "delivery": 6}
    assert case.state_rows == {
        "intake_idempotency_keys": 1,
        "intake_cases": 1,
        "intake_timeline": 7,
        "routing_routes": 1,
        "approval_cases": 1,
        "delivery_results": 1,
    }


def test_each_process_reads_what_its_counterparts_groups_read() -> None:
    assert shape.topics_read("intake") == ("intake", "routing", "approval", "delivery")
    assert shape.topics_read("approval") == ("intake", "routing", "delivery")
    assert shape.topics_read("delivery") == ("intake", "routing", "approval", "delivery")
    assert shape.appliers("routing") == {shape.SUBMITTED: ("routing-intake",)}
    assert shape.looks_up_partners("routing") and not shape.looks_up_partners("intake")
    assert shape.appliers("approval") == {shape.ROUTED: ("approval-routing",)}
    assert shape.appliers("delivery") == {shape.APPROVED: ("delivery-approval",)}


def test_a_case_goes_submitted_routed_approved_closed_in_tongbans_records() -> None:
    parent = shape.new_traceparent()
    record = shape.submitted_value("YZ-1", "2026-12-07T12:00:00Z", BODY)
    submitted = json.loads(record)
    assert submitted["application"] == APPLICATION and submitted["case_id"] == "YZ-1"
    routed = shape.routed_reply(
        submitted, shape.route_for(submitted, now=NOW), traceparent=parent, now=NOW
    )
    assert (routed.topic, routed.type, routed.handled_by) == ("routing", shape.ROUTED, "YZ-MKT")
    # tongban's routed record is its submitted one and about 1.2 KB of route and item
    assert len(routed.value) - len(record) > 1000
    decided = shape.approval_replies(json.loads(routed.value), traceparent=parent, now=NOW)
    assert [e.type for e in decided] == [shape.ACCEPTED, shape.APPROVED]
    approved = json.loads(decided[1].value)
    assert approved["applicant_id_number"] == "110105200102222640"
    delivered = shape.delivery_replies(approved, traceparent=parent, now=NOW)
    assert [e.type for e in delivered] == [shape.RESULT_ISSUED, shape.DELIVERED, shape.CLOSED]
    assert {e.case_id for e in [routed, *decided, *delivered]} == {"YZ-1"}
    assert len({e.event_id for e in [routed, *decided, *delivered]}) == 6
    assert shape.result_of(delivered)["license_id"].startswith("EL-MKT-0104-20261207-")


def test_headers_are_tongbans_cloudevents_with_the_trace() -> None:
    parent = shape.new_traceparent()
    child = shape.child_traceparent(parent)
    assert child.split("-")[1] == parent.split("-")[1] and child != parent
    event = shape.Outgoing("routing", shape.ROUTED, "e-1", "YZ-1", "t", child, "YZ-MKT", b"{}")
    headers = shape.headers(event)
    assert shape.header(headers, "ce_type") == shape.ROUTED
    assert shape.header(headers, "ce_source") == "/tongban/routing"
    assert shape.header(headers, "ce_handledby") == "YZ-MKT"
    assert shape.header(headers, "traceparent") == child
    no_department = shape.Outgoing("delivery", shape.CLOSED, "e-2", "YZ-1", "t", child, None, b"")
    assert shape.header(shape.headers(no_department), "ce_handledby") is None


@pytest.mark.parametrize(
    ("headers", "body", "code"),
    [
        ({}, BODY, "unauthenticated"),
        ({b"authorization": b"Bearer "}, BODY, "unauthenticated"),
        ({b"authorization": b"Basic x"}, BODY, "unauthenticated"),
        ({b"authorization": b"Bearer t"}, b"{not json", "validation_failed"),
        ({b"authorization": b"Bearer t"}, b"[1]", "validation_failed"),
        ({b"authorization": b"Bearer t"}, b'{"item_code": "X"}', "validation_failed"),
        (
            {b"authorization": b"Bearer t", b"idempotency-key": b"k" * 257},
            BODY,
            "invalid_idempotency_key",
        ),
    ],
)
def test_intake_refuses_with_problem_json(
    headers: dict[bytes, bytes], body: bytes, code: str
) -> None:
    problem = shape.check_submission(headers, body)
    assert isinstance(problem, shape.Problem)
    assert problem.code == code
    document = json.loads(problem.body())
    assert document["code"] == code and document["status"] == problem.status


def test_intake_takes_a_submission_with_its_key() -> None:
    taken = shape.check_submission(
        {b"authorization": b"Bearer t", b"idempotency-key": b"k-1"}, BODY
    )
    assert taken == shape.Submission("k-1", "MKT-0104", BODY)
    no_key = shape.check_submission({b"authorization": b"Bearer t"}, BODY)
    assert isinstance(no_key, shape.Submission) and no_key.idempotency_key is None


def test_intake_keeps_each_cases_latest_step_of_a_batch() -> None:
    events = [
        ("a", shape.ACCEPTED),
        ("b", shape.SUBMITTED),
        ("a", shape.ROUTED),  # came later from another topic: not a step back
        ("a", shape.CLOSED),
        ("b", "gov.case.unknown.v1"),
    ]
    assert shape.latest_steps(events) == {"a": (6, "closed"), "b": (0, "submitted")}


def test_a_record_redelivered_in_one_batch_is_applied_once() -> None:
    assert shape.first_of_each(["x", "y", "x", "z", "y"]) == [0, 1, 3]


def test_rung_figures_time_cases_from_their_scheduled_send() -> None:
    answers = [
        Answer("k1", 201, 100.0, 0.01, "c1"),
        Answer("k2", 201, 100.5, 0.02, "c2"),
        Answer("k3", 503, 101.0, 0.03, None),
        Answer("k4", 0, 101.5, 120.0, None),
    ]
    load = LoadResult(answers=answers, late=2, cpu_s=0.004, wall_s=2.0)
    figures = step_figures(2.0, load, {"c1": 100.05, "c2": 100.6}, {"c1": 100.2}, drained=False)
    assert (figures["offered"], figures["submitted"], figures["skipped_inflight_cap"]) == (6, 2, 2)
    assert figures["statuses"] == {"201": 2, "503": 1}
    assert figures["errors"] == {"no answer": 1}
    assert (figures["routed"], figures["closed"], figures["drained"]) == (2, 1, False)
    assert figures["submit_to_routed"]["max_ms"] == pytest.approx(100.0)
    assert figures["submit_to_closed"]["p50_ms"] == pytest.approx(200.0)
    assert figures["closed_per_s"] is None  # too few to tell a rate
    assert figures["load_generator"]["cpu_ms_per_request"] == pytest.approx(1.0)
