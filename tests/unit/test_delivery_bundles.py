"""One delivery for a bundle (DESIGN.md §8): readiness, what a ready bundle does, and the
events of its delivery and its one rating."""

from datetime import UTC, datetime

import pytest

from contracts.common import CaseStatus, DeliveryMethod, ResultDocument
from contracts.events import (
    BundleClosed,
    BundleDelivered,
    BundleRated,
    CaseClosed,
    CaseDelivered,
    CaseRated,
    CaseResultIssued,
    Rating,
)
from contracts.rest import BundleStatus
from services.delivery.domain.bundles import (
    Member,
    OnReady,
    bundle_delivery_events,
    bundle_rating_events,
    late_member_events,
    on_ready,
    rated_departments,
    readiness,
    status_when_ready,
)
from services.delivery.domain.results import plan_delivery

pytestmark = pytest.mark.unit

AT = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
DOC = ResultDocument(kind="licence", sha256="a" * 64, license_id="EL-X", title="证")
LETTER = ResultDocument(kind="decision_letter", sha256="b" * 64, title="不予")


def held(case_id: str, department: str = "D1", outcome: str = "approved") -> Member:
    return Member(
        case_id=case_id,
        item_code=f"I-{case_id}",
        outcome=outcome,
        document=DOC if outcome == "approved" else LETTER,
        status=CaseStatus.result_issued,
        department=department,
        issued_at=AT,
    )


def open_(case_id: str) -> Member:
    return Member(case_id=case_id, item_code=f"I-{case_id}")


def ended(case_id: str, how: str = "withdrawn") -> Member:
    return Member(case_id=case_id, item_code=f"I-{case_id}", ended=how)


def test_a_bundle_is_ready_when_every_member_has_a_result_or_has_ended() -> None:
    assert readiness(True, [held("A"), ended("B"), ended("C", "terminated")]).ready
    waiting = readiness(True, [held("A"), open_("B"), open_("C")])
    assert not waiting.ready and waiting.open_members == ("B", "C")


def test_a_bundle_whose_members_are_not_known_is_never_ready() -> None:
    """Results may come before gov.bundle.submitted.v1: they are held, not delivered."""
    assert not readiness(False, [held("A")]).ready
    assert not readiness(True, []).ready


@pytest.mark.parametrize(
    ("method", "action", "status"),
    [
        (DeliveryMethod.electronic, OnReady.deliver, BundleStatus.closed),
        (DeliveryMethod.postal, OnReady.deliver, BundleStatus.closed),
        (DeliveryMethod.counter_pickup, OnReady.await_pickup, BundleStatus.in_progress),
    ],
)
def test_a_ready_bundle_goes_out_at_once_or_waits_for_its_pickup(
    method: DeliveryMethod, action: OnReady, status: BundleStatus
) -> None:
    assert on_ready(method, [held("A"), ended("B")]) is action
    assert status_when_ready(action) is status


def test_a_bundle_whose_members_all_ended_has_nothing_to_deliver() -> None:
    action = on_ready(DeliveryMethod.electronic, [ended("A"), ended("B", "terminated")])
    assert action is OnReady.nothing
    assert status_when_ready(action) is BundleStatus.withdrawn


def test_a_member_result_is_held_whatever_the_method() -> None:
    for method in DeliveryMethod:
        plan = plan_delivery(method, address="路1号", held=True)
        assert plan.on_issue == (CaseResultIssued,)
        assert plan.status_after_issue is CaseStatus.result_issued
        assert plan.status_after_pickup is CaseStatus.closed
        assert not plan.needs_tracking_number  # the bundle's parcel carries it


def test_one_delivery_closes_every_member_with_a_result_then_the_bundle() -> None:
    members = [held("A", "D1"), ended("B"), held("C", "D2", outcome="denied")]
    events = bundle_delivery_events(
        "BD-1", members, method=DeliveryMethod.postal, at=AT, tracking_number="TA000000011CN"
    )
    assert [type(e) for e in events] == [
        CaseDelivered,
        CaseClosed,
        CaseDelivered,
        CaseClosed,
        BundleDelivered,
        BundleClosed,
    ]
    assert [getattr(e, "case_id", None) for e in events[:4]] == ["A", "A", "C", "C"]
    assert all(getattr(e, "bundle_id", None) == "BD-1" for e in events)
    delivered = events[0]
    assert isinstance(delivered, CaseDelivered)
    assert delivered.tracking_number == "TA000000011CN"  # one parcel
    bundle = events[4]
    assert isinstance(bundle, BundleDelivered)
    assert [(r.case_id, r.outcome, r.result) for r in bundle.results] == [
        ("A", "approved", DOC),
        ("B", "withdrawn", None),
        ("C", "denied", LETTER),
    ]
    closed = events[5]
    assert isinstance(closed, BundleClosed) and closed.members == ["A", "C"]


def test_a_counter_pickup_delivery_names_the_office() -> None:
    events = bundle_delivery_events(
        "BD-2", [held("A")], method=DeliveryMethod.counter_pickup, at=AT, office_code="OF-1"
    )
    delivered = events[0]
    assert isinstance(delivered, CaseDelivered) and delivered.office_code == "OF-1"


def test_a_result_after_its_bundle_went_out_follows_it() -> None:
    late = held("L")
    assert [
        type(e) for e in late_member_events("BD", [late], method=DeliveryMethod.electronic, at=AT)
    ] == [
        CaseDelivered,
        CaseClosed,
    ]
    assert late_member_events("BD", [late], method=DeliveryMethod.counter_pickup, at=AT) == []


def test_one_rating_counts_for_each_member_department() -> None:
    members = [held("A", "D2"), held("B", "D1"), ended("C"), held("D", "D2")]
    events = bundle_rating_events("BD-3", members, rating=Rating.dissatisfied, comment="慢", at=AT)
    rated = [e for e in events if isinstance(e, CaseRated)]
    assert [e.case_id for e in rated] == ["A", "B", "D"]
    assert all(e.bundle_id == "BD-3" and e.rating is Rating.dissatisfied for e in rated)
    bundle = events[-1]
    assert isinstance(bundle, BundleRated) and bundle.departments == ["D1", "D2"]
    assert rated_departments(members) == ["D1", "D2"]
