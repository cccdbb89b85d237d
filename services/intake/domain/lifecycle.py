"""How each event moves a case as the counter sees it: its status, route, failure, deadline
and missing materials (pure).

Events of one case arrive in order per topic but not across topics (the approval topic may be
read before the routing one), so a status only moves forward by rank; a supplement round moves
between `accepted` and `supplement_requested`, which share a rank.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from contracts.common import CaseStatus
from contracts.events import (
    CaseAccepted,
    CaseApprovalHeld,
    CaseApproved,
    CaseClosed,
    CaseDeadlineChanged,
    CaseDelivered,
    CaseDenied,
    CaseHandoverRefused,
    CaseNotified,
    CaseResultIssued,
    CaseRevoked,
    CaseRouted,
    CaseRouteFailed,
    CaseSubmitted,
    CaseSupplemented,
    CaseSupplementRequested,
    CaseTerminated,
    CaseWithdrawn,
)

RANK: dict[CaseStatus, int] = {
    CaseStatus.waiting: 0,
    CaseStatus.awaiting_supplement: 0,
    CaseStatus.submitted: 1,
    CaseStatus.routed: 2,
    CaseStatus.route_failed: 2,
    CaseStatus.accepted: 3,
    CaseStatus.supplement_requested: 3,
    CaseStatus.approval_held: 4,
    CaseStatus.approved: 5,
    CaseStatus.denied: 5,
    CaseStatus.result_issued: 6,
    CaseStatus.delivered: 7,
    CaseStatus.closed: 8,
    CaseStatus.withdrawn: 9,
    CaseStatus.terminated: 9,
    CaseStatus.revoked: 10,  # after closed: a breached commitment revokes a delivered result
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
    CaseApprovalHeld.TYPE: CaseStatus.approval_held,
    CaseTerminated.TYPE: CaseStatus.terminated,
    CaseRevoked.TYPE: CaseStatus.revoked,
}

# Before a decision the applicant may still withdraw (DESIGN.md §1).
WITHDRAWABLE = frozenset(
    {
        CaseStatus.waiting,  # a member of a bundle waiting for its prerequisites (§8)
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


HANDOVER_REFUSED = "handover_refused"  # the failure code of a refused entrusted handover


def case_changes(
    status: CaseStatus,
    event_type: str,
    data: dict[str, Any],
    failure: dict[str, Any] | None = None,
    *,
    from_partner: bool = False,
) -> dict[str, Any]:
    """The columns an event changes in the counter's view of a case whose status and failure
    are as given (pure). An event `from_partner` (published by another region, DESIGN.md §9)
    moves the status, deadline and decision as any does, but never the route: a case taken
    here keeps the cross_region route this region gave it, a case adopted here its own."""
    changes: dict[str, Any] = {}
    new_status = next_status(status, event_type)
    if new_status is not None:
        changes |= {"status": new_status.value, "status_rank": RANK[new_status]}
    if event_type == CaseRouted.TYPE:
        if not from_partner:
            changes["route"] = data["route"]
        # A route clears a routing failure (a case retried out of triage), not a refused
        # handover: approval's refusal of the routed case may be applied here before the
        # routed event itself, since topics are not ordered among themselves.
        if (failure or {}).get("code") != HANDOVER_REFUSED:
            changes["failure"] = None
    elif event_type == CaseRouteFailed.TYPE:
        changes["failure"] = data["failure"]
    elif event_type in (CaseAccepted.TYPE, CaseDeadlineChanged.TYPE):
        # The deadline as it stands: set at acceptance, moved by supplements and calendar
        # extensions; None while unknown (past the calendar).
        changes["deadline"] = date.fromisoformat(data["deadline"]) if data.get("deadline") else None
        if event_type == CaseAccepted.TYPE and data.get("deferred_due"):
            # The last day to bring the deferred materials (容缺受理), set at acceptance.
            changes["deferred_due"] = date.fromisoformat(data["deferred_due"])
    elif event_type == CaseHandoverRefused.TYPE:
        changes["failure"] = {"code": HANDOVER_REFUSED, "explanation": data["reason"]}
    elif event_type == CaseSupplementRequested.TYPE and new_status is not None:
        changes["missing_materials"] = data["missing_materials"]
    decision = DECISION_OF_EVENT.get(event_type) or (
        data.get("outcome") if event_type == CaseClosed.TYPE else None
    )
    if decision in DECISIONS:
        # Kept apart from the status: a denial's letter moves the case on to result_issued as
        # an approval's licence does, and that may be applied before the decision itself.
        changes["decision"] = decision
    return changes


DECISIONS = ("approved", "denied")
DECISION_OF_EVENT = {CaseApproved.TYPE: "approved", CaseDenied.TYPE: "denied"}
