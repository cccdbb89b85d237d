"""How each event moves a case's status as the counter sees it (pure).

Events of one case arrive in order per topic but not across topics (the approval topic may be
read before the routing one), so a status only moves forward by rank; a supplement round moves
between `accepted` and `supplement_requested`, which share a rank.
"""

from __future__ import annotations

from contracts.common import CaseStatus
from contracts.events import (
    CaseAccepted,
    CaseApproved,
    CaseClosed,
    CaseDelivered,
    CaseDenied,
    CaseNotified,
    CaseResultIssued,
    CaseRouted,
    CaseRouteFailed,
    CaseSubmitted,
    CaseSupplemented,
    CaseSupplementRequested,
    CaseWithdrawn,
)

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
    CaseNotified.TYPE: CaseStatus.awaiting_supplement,
    CaseSubmitted.TYPE: CaseStatus.submitted,
    CaseWithdrawn.TYPE: CaseStatus.withdrawn,
    CaseRouted.TYPE: CaseStatus.routed,
    CaseRouteFailed.TYPE: CaseStatus.route_failed,
    CaseAccepted.TYPE: CaseStatus.accepted,
    CaseSupplementRequested.TYPE: CaseStatus.supplement_requested,
    CaseApproved.TYPE: CaseStatus.approved,
    CaseDenied.TYPE: CaseStatus.denied,
    CaseResultIssued.TYPE: CaseStatus.result_issued,
    CaseDelivered.TYPE: CaseStatus.delivered,
    CaseClosed.TYPE: CaseStatus.closed,
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
    if event_type == CaseSupplemented.TYPE:
        # Materials answering a review's request: the review resumes.
        return CaseStatus.accepted if current is CaseStatus.supplement_requested else None
    target = STATUS_OF_EVENT.get(event_type)
    if target is None or target is current:
        return None
    return target if RANK[target] >= RANK[current] else None
