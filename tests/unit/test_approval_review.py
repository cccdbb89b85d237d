"""approval's review rules (services/approval/domain/review.py): every transition and every
refusal."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from contracts.catalog import Calendar
from contracts.common import (
    Applicant,
    Application,
    CaseStatus,
    Category,
    Channel,
    Delivery,
    DeliveryMethod,
    ItemSnapshot,
    Level,
    Mode,
    Path,
    Route,
    RouteLevel,
)
from contracts.events import (
    CaseAccepted,
    CaseApproved,
    CaseDenied,
    CaseRouted,
    CaseSupplementRequested,
    DecisionKind,
)
from services.approval.domain import review
from services.approval.domain.review import CaseState, Decision, Outcome, Unrouted
from services.common.refusals import Refusal
from services.common.web import problem_of
from services.common.workdays import WorkCalendar

pytestmark = pytest.mark.unit

DEPT = "HC01-MKT"
# 2026-09-29 16:30 UTC is 2026-09-30 00:30 in Shanghai: the acceptance date is the local one.
NOW = datetime(2026, 9, 29, 16, 30, tzinfo=UTC)
LATER = NOW + timedelta(hours=3)
CALENDAR = WorkCalendar.of(
    Calendar(
        covers_until=date(2027, 12, 31),
        holidays=[date(2026, 10, 1), date(2026, 10, 2)],
        workdays=[date(2026, 10, 10)],
    )
)


def make_routed(
    *,
    instant: bool = False,
    time_limit_days: int = 5,
    intake_office: str | None = "HC01-DC",
    office_code: str | None = "HC01-DC",
    catalog_version: int = 3,
) -> CaseRouted:
    return CaseRouted(
        case_id="HC-20260930-ABC",
        route=Route(
            path=Mode.delegated,
            level=Level.district,
            handled_by=DEPT,
            same_city=False,
            rule="R5-delegated",
            catalog_version=catalog_version,
            explanation="delegated to the district market bureau",
            time_limit_days=time_limit_days,
            instant=instant,
            intake_office=intake_office,
        ),
        item=ItemSnapshot(
            code="MKT-0001",
            name="食品经营许可",
            instant=instant,
            time_limit_days=time_limit_days,
            result_kind="licence",
            e_license=True,
        ),
        application=Application(
            item_code="MKT-0001",
            channel=Channel.counter,
            office_code=office_code,
            applicant=Applicant(
                category=Category.enterprise,
                name="海城食品有限公司",
                id_number="91310000MA1FL4T22B",
                division_code="HC01",
            ),
            delivery=Delivery(method=DeliveryMethod.postal, address="海城市东湖区湖滨路 1 号"),
        ),
        submitted_at=NOW - timedelta(minutes=5),
    )


def accepted_case(**kwargs: object) -> CaseState:
    outcome = review.take(make_routed(**kwargs), now=NOW, calendar=CALENDAR)  # type: ignore[arg-type]
    assert outcome.state.status is CaseStatus.accepted
    return outcome.state


def decision(kind: DecisionKind, **kwargs: object) -> Decision:
    fields: dict[str, object] = {"department": DEPT, "kind": kind} | kwargs
    return Decision(**fields)  # type: ignore[arg-type]


def ok(result: Outcome | Refusal) -> Outcome:
    assert isinstance(result, Outcome), result
    return result


def refused(result: Outcome | Refusal) -> Refusal:
    assert isinstance(result, Refusal), result
    return result


def field_of(refusal: Refusal) -> str | None:
    """The one field a refusal names, if any; its error says what the detail says."""
    if not refusal.errors:
        return None
    (error,) = refusal.errors
    assert (error.message, error.code) == (refusal.detail, None)
    return error.field


APPROVE = decision(DecisionKind.approve, reason="材料齐全")
DENY = decision(
    DecisionKind.deny, reason="不符合条件", legal_basis="《食品经营许可管理办法》第十条"
)
SUPPLEMENT = decision(DecisionKind.request_supplement, missing_materials=("M02", "M03"))
ACCEPT = decision(DecisionKind.accept)


# -- taking a routed case ----------------------------------------------------------------------


def test_a_routed_case_is_accepted_at_once_with_its_deadline() -> None:
    outcome = review.take(make_routed(), now=NOW, calendar=CALENDAR)
    state = outcome.state
    assert state.status is CaseStatus.accepted
    assert state.department == DEPT
    assert state.accepted_at == NOW
    # Accepted Wed 30 Sep (local); 1-2 Oct holidays, weekend; 5th working day is Fri 9 Oct.
    assert state.deadline == date(2026, 10, 9)
    [event] = outcome.events
    assert event.TYPE == "gov.case.accepted.v1"
    assert event == CaseAccepted(
        case_id=state.case_id,
        department=DEPT,
        accepted_at=NOW,
        deadline=date(2026, 10, 9),
        time_limit_days=5,
    )


def test_the_deadline_counts_a_make_up_workday() -> None:
    state = accepted_case(time_limit_days=6)
    assert state.deadline == date(2026, 10, 10)  # a Saturday, but a make-up working day


def test_the_deadline_is_unknown_past_the_calendar_never_guessed() -> None:
    short = replace(CALENDAR, covers_until=date(2026, 10, 5))
    assert review.take(make_routed(), now=NOW, calendar=short).state.deadline is None
    assert review.take(make_routed(), now=NOW, calendar=None).state.deadline is None


def test_an_instant_item_is_approved_as_soon_as_it_is_accepted() -> None:
    outcome = review.take(make_routed(instant=True, time_limit_days=0), now=NOW, calendar=CALENDAR)
    assert outcome.state.status is CaseStatus.approved
    assert outcome.state.decided_at == NOW
    assert [e.TYPE for e in outcome.events] == ["gov.case.accepted.v1", "gov.case.approved.v1"]
    approved = outcome.events[1]
    assert isinstance(approved, CaseApproved)
    assert approved.department == DEPT
    assert outcome.events[0].model_dump()["deadline"] == date(2026, 9, 30)


def test_an_instant_route_is_enough_even_if_the_snapshot_says_otherwise() -> None:
    routed = make_routed()
    routed = routed.model_copy(update={"route": routed.route.model_copy(update={"instant": True})})
    assert review.take(routed, now=NOW, calendar=CALENDAR).state.status is CaseStatus.approved


# -- approve / deny ----------------------------------------------------------------------------


def test_approve_carries_what_delivery_needs() -> None:
    outcome = ok(review.decide(accepted_case(), APPROVE, case_id="x", now=LATER))
    assert outcome.state.status is CaseStatus.approved
    assert outcome.state.decision is DecisionKind.approve
    assert outcome.state.decided_at == LATER
    [event] = outcome.events
    assert event.TYPE == "gov.case.approved.v1"
    assert isinstance(event, CaseApproved)
    assert event.model_dump(mode="json") == {
        "case_id": "HC-20260930-ABC",
        "bundle_id": None,
        "department": DEPT,
        "decided_at": LATER.isoformat().replace("+00:00", "Z"),
        "reason": "材料齐全",
        "item": {
            "code": "MKT-0001",
            "name": "食品经营许可",
            "instant": False,
            "time_limit_days": 5,
            "result_kind": "licence",
            "e_license": True,
            "license_type": None,
            "defer_days": 5,
            "verify_days": 20,
        },
        "delivery_method": "postal",
        "delivery_address": "海城市东湖区湖滨路 1 号",
        "intake_office": "HC01-DC",
        "level": "district",
        "applicant_name": "海城食品有限公司",
        "applicant_id_number": "91310000MA1FL4T22B",
    }


def test_the_intake_office_falls_back_to_the_application() -> None:
    case = accepted_case(intake_office=None, office_code="HC0101-SC")
    [event] = ok(review.decide(case, APPROVE, case_id="x", now=LATER)).events
    assert isinstance(event, CaseApproved)
    assert event.intake_office == "HC0101-SC"


def test_deny_with_its_legal_basis() -> None:
    outcome = ok(review.decide(accepted_case(), DENY, case_id="x", now=LATER))
    assert outcome.state.status is CaseStatus.denied
    assert outcome.state.legal_basis == "《食品经营许可管理办法》第十条"
    [event] = outcome.events
    assert event.TYPE == "gov.case.denied.v1"
    assert isinstance(event, CaseDenied)
    assert event.legal_basis == "《食品经营许可管理办法》第十条"
    assert event.reason == "不符合条件"
    assert event.delivery_method is DeliveryMethod.postal


@pytest.mark.parametrize("basis", [None, "", "   "])
def test_a_denial_without_legal_basis_is_refused(basis: str | None) -> None:
    refusal = refused(
        review.decide(
            accepted_case(), decision(DecisionKind.deny, legal_basis=basis), case_id="x", now=LATER
        )
    )
    assert (refusal.code, refusal.status, field_of(refusal)) == (
        "legal_basis_required",
        422,
        "legal_basis",
    )


# -- supplement rounds -------------------------------------------------------------------------


def test_request_supplement_lists_every_missing_material_once() -> None:
    ask = decision(
        DecisionKind.request_supplement,
        missing_materials=("M02", " M03 ", "M02", ""),
        reason="请补正",
    )
    outcome = ok(review.decide(accepted_case(), ask, case_id="x", now=LATER))
    assert outcome.state.status is CaseStatus.supplement_requested
    assert outcome.state.missing_materials == ("M02", "M03")
    assert outcome.state.pauses == (review.Pause(requested_at=LATER),)
    assert outcome.events == (
        CaseSupplementRequested(
            case_id="HC-20260930-ABC",
            department=DEPT,
            missing_materials=["M02", "M03"],
            reason="请补正",
        ),
    )


@pytest.mark.parametrize("missing", [(), ("",), (" ", "  ")])
def test_a_supplement_request_without_materials_is_refused(missing: tuple[str, ...]) -> None:
    ask = decision(DecisionKind.request_supplement, missing_materials=missing)
    refusal = refused(review.decide(accepted_case(), ask, case_id="x", now=LATER))
    assert (refusal.code, refusal.status, field_of(refusal)) == (
        "missing_materials_required",
        422,
        "missing_materials",
    )


def test_supplemented_resumes_the_review_and_closes_the_pause() -> None:
    waiting = ok(review.decide(accepted_case(), SUPPLEMENT, case_id="x", now=LATER)).state
    back = review.supplemented(waiting, now=LATER + timedelta(days=2), calendar=CALENDAR)
    assert back is not None
    assert [e.TYPE for e in back.events] == ["gov.case.deadline_changed.v1"]
    assert back.state.status is CaseStatus.accepted
    assert back.state.missing_materials == ()
    assert back.state.pauses == (
        review.Pause(requested_at=LATER, supplemented_at=LATER + timedelta(days=2)),
    )
    # and the case can be decided again, or sent round a second time
    assert ok(review.decide(back.state, APPROVE, case_id="x", now=LATER)).state.status is (
        CaseStatus.approved
    )
    again = ok(review.decide(back.state, SUPPLEMENT, case_id="x", now=LATER)).state
    assert len(again.pauses) == 2


def test_supplemented_changes_nothing_when_no_supplement_was_asked() -> None:
    assert review.supplemented(accepted_case(), now=LATER, calendar=CALENDAR) is None


def test_no_second_supplement_request_while_one_is_pending() -> None:
    waiting = ok(review.decide(accepted_case(), SUPPLEMENT, case_id="x", now=LATER)).state
    refusal = refused(review.decide(waiting, SUPPLEMENT, case_id="x", now=LATER))
    assert (refusal.code, refusal.status) == ("invalid_state", 409)
    assert "M02, M03" in refusal.detail


# -- withdrawal --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [CaseStatus.accepted, CaseStatus.supplement_requested])
def test_an_undecided_case_can_be_withdrawn(status: CaseStatus) -> None:
    outcome = review.withdrawn(replace(accepted_case(), status=status), at=LATER)
    assert outcome is not None
    assert outcome.state.status is CaseStatus.withdrawn
    assert outcome.state.withdrawn_at == LATER
    assert outcome.events == ()


@pytest.mark.parametrize("status", [CaseStatus.approved, CaseStatus.denied, CaseStatus.withdrawn])
def test_a_withdrawal_after_the_decision_changes_nothing(status: CaseStatus) -> None:
    assert review.withdrawn(replace(accepted_case(), status=status), at=LATER) is None


# -- refusals ----------------------------------------------------------------------------------


def test_a_refusal_answers_as_problem_json_naming_the_field_to_fix() -> None:
    deny = decision(DecisionKind.deny)
    refusal = refused(review.decide(accepted_case(), deny, case_id="x", now=LATER))
    detail = "Give legal_basis: the law or regulation, and its article, the denial rests on."
    assert problem_of(refusal).body("/v1/cases/x/decisions") == {
        "type": "https://tongban.example/problems/legal_basis_required",
        "title": "A denial must state its legal basis",
        "status": 422,
        "code": "legal_basis_required",
        "detail": detail,
        "instance": "/v1/cases/x/decisions",
        "errors": [{"field": "legal_basis", "message": detail}],
    }
    unknown = refused(review.decide(None, APPROVE, case_id="HC-X", now=LATER))
    assert problem_of(unknown).body()["errors"] == []


def test_an_unknown_case_is_not_found() -> None:
    refusal = refused(review.decide(None, APPROVE, case_id="HC-X", now=LATER))
    assert (refusal.code, refusal.status) == ("case_not_found", 404)
    assert "HC-X" in refusal.detail


def test_a_case_withdrawn_before_it_was_routed_takes_no_decision() -> None:
    refusal = refused(review.decide(Unrouted("HC-X"), APPROVE, case_id="HC-X", now=LATER))
    assert (refusal.code, refusal.status) == ("invalid_state", 409)


@pytest.mark.parametrize("d", [APPROVE, DENY, SUPPLEMENT, ACCEPT])
def test_another_department_cannot_decide(d: Decision) -> None:
    other = replace(d, department="M-MKT")
    refusal = refused(review.decide(accepted_case(), other, case_id="x", now=LATER))
    assert (refusal.code, refusal.status, field_of(refusal)) == (
        "wrong_department",
        403,
        "department",
    )
    assert DEPT in refusal.detail


def test_the_department_is_checked_before_the_state() -> None:
    decided = replace(accepted_case(), status=CaseStatus.approved)
    other = replace(APPROVE, department="M-MKT")
    assert refused(review.decide(decided, other, case_id="x", now=LATER)).code == (
        "wrong_department"
    )


def test_accept_is_refused_because_acceptance_is_automatic() -> None:
    refusal = refused(review.decide(accepted_case(), ACCEPT, case_id="x", now=LATER))
    assert (refusal.code, refusal.status) == ("invalid_state", 409)
    assert "automatic" in refusal.detail


def test_the_state_is_checked_before_the_decision_is_complete() -> None:
    decided = replace(accepted_case(), status=CaseStatus.approved)
    bare_deny = decision(DecisionKind.deny)
    assert refused(review.decide(decided, bare_deny, case_id="x", now=LATER)).code == (
        "invalid_state"
    )


# Every (status, decision) pair: what it leads to, or None for invalid_state.
EXPECTED: dict[tuple[CaseStatus, DecisionKind], CaseStatus | None] = {
    (CaseStatus.accepted, DecisionKind.approve): CaseStatus.approved,
    (CaseStatus.accepted, DecisionKind.deny): CaseStatus.denied,
    (CaseStatus.accepted, DecisionKind.request_supplement): CaseStatus.supplement_requested,
}
STATES = [
    CaseStatus.accepted,
    CaseStatus.supplement_requested,
    CaseStatus.approved,
    CaseStatus.denied,
    CaseStatus.withdrawn,
]
DECISIONS = {
    DecisionKind.accept: ACCEPT,
    DecisionKind.approve: APPROVE,
    DecisionKind.deny: DENY,
    DecisionKind.request_supplement: SUPPLEMENT,
}


@pytest.mark.parametrize("status", STATES)
@pytest.mark.parametrize("kind", list(DecisionKind))
def test_the_state_machine(status: CaseStatus, kind: DecisionKind) -> None:
    case = replace(accepted_case(), status=status)
    result = review.decide(case, DECISIONS[kind], case_id=case.case_id, now=LATER)
    expected = EXPECTED.get((status, kind))
    if expected is None:
        refusal = refused(result)
        assert (refusal.code, refusal.status) == ("invalid_state", 409)
        assert status.value in refusal.detail
    else:
        outcome = ok(result)
        assert outcome.state.status is expected
        assert len(outcome.events) == 1
        assert outcome.events[0].case_id == case.case_id


# -- across regions (DESIGN.md §9) --------------------------------------------------------------


def cross_region_route(routed: CaseRouted, partner: str = "LZ") -> CaseRouted:
    """The route of rule R2-cross-region: forwarded to partner region `partner`."""
    route = routed.route.model_copy(
        update={
            "path": Path.cross_region,
            "level": RouteLevel.partner,
            "handled_by": partner,
            "rule": "R2-cross-region",
        }
    )
    return routed.model_copy(update={"route": route})


def test_a_cross_region_route_is_decided_by_its_partner_and_every_other_here() -> None:
    assert review.decided_by_partner(cross_region_route(make_routed(), "LZ").route) == "LZ"
    for path in Mode:
        routed = make_routed()
        route = routed.route.model_copy(update={"path": Path(path.value)})
        assert review.decided_by_partner(route) is None, path
