import pytest

from contracts.common import CaseStatus
from services.intake.domain.lifecycle import case_changes, next_status

pytestmark = pytest.mark.unit

S = CaseStatus


@pytest.mark.parametrize(
    ("current", "event", "expected"),
    [
        (S.submitted, "gov.case.routed.v1", S.routed),
        (S.submitted, "gov.case.route_failed.v1", S.route_failed),
        (S.routed, "gov.case.accepted.v1", S.accepted),
        (S.accepted, "gov.case.supplement_requested.v1", S.supplement_requested),
        (S.supplement_requested, "gov.case.supplemented.v1", S.accepted),
        (S.accepted, "gov.case.approved.v1", S.approved),
        (S.approved, "gov.case.result_issued.v1", S.result_issued),
        (S.result_issued, "gov.case.delivered.v1", S.delivered),
        (S.delivered, "gov.case.closed.v1", S.closed),
        (S.accepted, "gov.case.withdrawn.v1", S.withdrawn),
        # Topics are not ordered among themselves: a late event never moves a case back.
        (S.accepted, "gov.case.routed.v1", None),
        (S.closed, "gov.case.delivered.v1", None),
        (S.approved, "gov.case.accepted.v1", None),
        # Once withdrawn, nothing moves it.
        (S.withdrawn, "gov.case.closed.v1", None),
        # Events that do not change the status.
        (S.accepted, "gov.case.decision.v1", None),
        (S.accepted, "gov.case.sla_warning.v1", None),
        (S.closed, "gov.case.rated.v1", None),
        (S.awaiting_supplement, "gov.case.supplemented.v1", None),
    ],
)
def test_status_moves_forward_only(
    current: CaseStatus, event: str, expected: CaseStatus | None
) -> None:
    assert next_status(current, event) == expected


def test_events_carry_route_failure_and_deadline_into_the_view() -> None:
    route = {"path": "online", "handled_by": "M-X"}
    assert case_changes(S.submitted, "gov.case.routed.v1", {"route": route}) == {
        "status": "routed",
        "status_rank": 2,
        "route": route,
        "failure": None,
    }
    failed = case_changes(
        S.submitted,
        "gov.case.route_failed.v1",
        {"failure": {"code": "unknown_item", "explanation": "x"}},
    )
    assert failed["status"] == "route_failed" and failed["failure"]["code"] == "unknown_item"
    accepted = case_changes(S.routed, "gov.case.accepted.v1", {"deadline": "2026-12-10"})
    assert str(accepted["deadline"]) == "2026-12-10"
    unknown_deadline = case_changes(S.routed, "gov.case.accepted.v1", {"deadline": None})
    assert unknown_deadline["deadline"] is None


def test_a_route_clears_a_routing_failure_but_not_a_refused_handover() -> None:
    """Approval's refusal of a routed case may reach intake before the routed event (topics
    are not ordered among themselves): the late route must not wipe the refusal."""
    route = {"path": "entrusted", "handled_by": "M-X"}
    routing_failure = {"code": "unknown_item", "explanation": "x"}
    retried = case_changes(S.route_failed, "gov.case.routed.v1", {"route": route}, routing_failure)
    assert retried["failure"] is None and retried["route"] == route
    refused = case_changes(
        S.submitted, "gov.case.handover_refused.v1", {"reason": "signature does not match"}
    )
    assert refused["failure"]["code"] == "handover_refused"
    late_route = case_changes(S.routed, "gov.case.routed.v1", {"route": route}, refused["failure"])
    assert "failure" not in late_route and late_route["route"] == route
