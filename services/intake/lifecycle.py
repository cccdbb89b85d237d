"""How each event moves a case's status as the counter sees it (pure).

Events of one case arrive in order per topic but not across topics (the approval topic may be
read before the routing one), so a status only moves forward by rank; a supplement round moves
between `accepted` and `supplement_requested`, which share a rank.
"""

from __future__ import annotations

from contracts.common import CaseStatus

RANK: dict[CaseStatus, int] = {
    CaseStatus.awaiting_supplement: 0,
    CaseStatus.submitted: 1,
    CaseStatus.routed: 2,
    CaseStatus.route_failed: 2,
    CaseStatus.accepted: 3,
    CaseStatus.supplement_requested: 3,
    CaseStatus.approved: 5,
    CaseStatus.denied: 5,
    CaseStatus.result_issued: 6,
    CaseStatus.delivered: 7,
    CaseStatus.closed: 8,
    CaseStatus.withdrawn: 9,
}

STATUS_OF_EVENT: dict[str, CaseStatus] = {
    "gov.case.notified.v1": CaseStatus.awaiting_supplement,
    "gov.case.submitted.v1": CaseStatus.submitted,
    "gov.case.withdrawn.v1": CaseStatus.withdrawn,
    "gov.case.routed.v1": CaseStatus.routed,
    "gov.case.route_failed.v1": CaseStatus.route_failed,
    "gov.case.accepted.v1": CaseStatus.accepted,
    "gov.case.supplement_requested.v1": CaseStatus.supplement_requested,
    "gov.case.approved.v1": CaseStatus.approved,
    "gov.case.denied.v1": CaseStatus.denied,
    "gov.case.result_issued.v1": CaseStatus.result_issued,
    "gov.case.delivered.v1": CaseStatus.delivered,
    "gov.case.closed.v1": CaseStatus.closed,
}

# Before a decision the applicant may still withdraw (DESIGN.md §1).
WITHDRAWABLE = frozenset(
    {
        CaseStatus.awaiting_supplement,
        CaseStatus.submitted,
        CaseStatus.routed,
        CaseStatus.route_failed,
        CaseStatus.accepted,
        CaseStatus.supplement_requested,
    }
)


def next_status(current: CaseStatus, event_type: str) -> CaseStatus | None:
    """The status after `event_type`, or None when the event leaves the status as it is."""
    if current is CaseStatus.withdrawn:
        return None
    if event_type == "gov.case.supplemented.v1":
        # Materials answering a review's request: the review resumes.
        return CaseStatus.accepted if current is CaseStatus.supplement_requested else None
    target = STATUS_OF_EVENT.get(event_type)
    if target is None or target is current:
        return None
    return target if RANK[target] >= RANK[current] else None
