"""One delivery for a bundle (一件事一次办, DESIGN.md §8), pure: no I/O, the clock passed in.

Guarantees the handlers build on:
- a bundle is ready when its members are known (`gov.bundle.submitted.v1`) and every member
  has its result or has ended (withdrawn, terminated): `readiness`;
- a ready bundle goes out once, all its results together: electronic and postal at once,
  counter_pickup at its one pickup at the intake office; a bundle whose members all ended
  without a result has nothing to deliver and ends `withdrawn`: `on_ready`;
- its events, in order: each member with a result delivered and closed, then the bundle
  delivered and closed (`bundle_delivery_events`); one rating, counted for every member with
  a result, in its department (`bundle_rating_events`).
Members' events all name the bundle (`bundle_id`).

    in_progress --ready, electronic | postal-----------------> closed
                --ready, counter_pickup --pickup at the office-> closed
                --ready, no member has a result--------------> withdrawn
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from contracts.common import CaseStatus, DeliveryMethod, ResultDocument
from contracts.events import (
    BundleClosed,
    BundleDelivered,
    BundleRated,
    BundleResult,
    CaseClosed,
    CaseDelivered,
    CaseRated,
    Event,
    Rating,
)
from contracts.rest import BundleStatus
from services.delivery.domain.results import DeliveryFacts, delivery_events

# How a member ends without a result (its own events: withdrawn by intake, terminated by
# approval); approved and denied members have a result (a decision letter for a denial).
ENDED_OUTCOMES = frozenset({CaseStatus.withdrawn.value, CaseStatus.terminated.value})


@dataclass(frozen=True)
class Member:
    """One member as delivery knows it: its result (if issued) or how it ended (if so)."""

    case_id: str
    item_code: str
    outcome: str | None = None  # approved | denied: it has a result
    document: ResultDocument | None = None
    status: CaseStatus | None = None  # its result's status: result_issued, delivered, closed
    department: str | None = None  # the deciding department (ratings count for it)
    ended: str | None = None  # withdrawn | terminated: ended without a result
    issued_at: datetime | None = None
    revoked: bool = False

    @property
    def has_result(self) -> bool:
        return self.outcome is not None

    @property
    def done(self) -> bool:
        return self.has_result or self.ended is not None

    @property
    def held(self) -> bool:
        """Its result waits for the bundle's delivery."""
        return self.status is CaseStatus.result_issued


@dataclass(frozen=True)
class Readiness:
    ready: bool
    open_members: tuple[str, ...]  # members with neither a result nor an end yet


def readiness(known: bool, members: Sequence[Member]) -> Readiness:
    """Ready once the bundle's members are known and each has its result or has ended."""
    open_ = tuple(m.case_id for m in members if not m.done)
    return Readiness(ready=known and bool(members) and not open_, open_members=open_)


class OnReady(StrEnum):
    deliver = "deliver"  # electronic, postal: out at once
    await_pickup = "await_pickup"  # counter_pickup: at the intake office's counter
    nothing = "nothing"  # no member has a result: nothing to deliver


def on_ready(method: DeliveryMethod, members: Sequence[Member]) -> OnReady:
    """What a bundle that just became ready does."""
    if not any(m.has_result for m in members):
        return OnReady.nothing
    if method is DeliveryMethod.counter_pickup:
        return OnReady.await_pickup
    return OnReady.deliver


def status_when_ready(action: OnReady) -> BundleStatus:
    """The bundle's status once `action` is taken (a pickup bundle stays in progress)."""
    return {
        OnReady.deliver: BundleStatus.closed,
        OnReady.await_pickup: BundleStatus.in_progress,
        OnReady.nothing: BundleStatus.withdrawn,
    }[action]


def bundle_result(member: Member) -> BundleResult:
    """A member's line in `gov.bundle.delivered.v1`: its result, or how it ended."""
    outcome = member.outcome or member.ended or "open"
    if member.revoked:
        outcome = CaseStatus.revoked.value
    return BundleResult(
        case_id=member.case_id,
        item_code=member.item_code,
        outcome=outcome,
        result=member.document if member.has_result else None,
    )


def member_deliveries(
    bundle_id: str,
    members: Sequence[Member],
    *,
    method: DeliveryMethod,
    at: datetime,
    tracking_number: str | None = None,
    office_code: str | None = None,
) -> list[Event]:
    """Every held result delivered and closed, in member order."""
    events: list[Event] = []
    for member in members:
        if not member.held:
            continue
        assert member.document is not None and member.outcome is not None
        facts = DeliveryFacts(
            case_id=member.case_id,
            outcome=member.outcome,
            document=member.document,
            method=method,
            issued_at=member.issued_at or at,
            tracking_number=tracking_number,
            office_code=office_code,
            bundle_id=bundle_id,
        )
        events.extend(delivery_events((CaseDelivered, CaseClosed), facts, at=at))
    return events


def bundle_delivery_events(
    bundle_id: str,
    members: Sequence[Member],
    *,
    method: DeliveryMethod,
    at: datetime,
    tracking_number: str | None = None,
    office_code: str | None = None,
) -> list[Event]:
    """The events of one bundle delivery: every held result delivered and closed (in member
    order), then the bundle delivered (every member's result or end) and closed."""
    events = member_deliveries(
        bundle_id,
        members,
        method=method,
        at=at,
        tracking_number=tracking_number,
        office_code=office_code,
    )
    events.append(
        BundleDelivered(
            bundle_id=bundle_id,
            method=method,
            delivered_at=at,
            office_code=office_code,
            tracking_number=tracking_number,
            results=[bundle_result(m) for m in members],
        )
    )
    closed = [m.case_id for m in members if m.held]
    events.append(BundleClosed(bundle_id=bundle_id, closed_at=at, members=closed))
    return events


def late_member_events(
    bundle_id: str, members: Sequence[Member], *, method: DeliveryMethod, at: datetime
) -> list[Event]:
    """Results that come after their bundle went out (a member whose withdrawal lost the
    race with its decision): electronic and postal deliver them at once, as the bundle was;
    counter_pickup keeps them for the bundle's next pickup."""
    if method is DeliveryMethod.counter_pickup:
        return []
    return member_deliveries(bundle_id, members, method=method, at=at)


def rated_departments(members: Iterable[Member]) -> list[str]:
    """The departments a bundle's one rating counts for: every member's with a result."""
    return sorted({m.department for m in members if m.has_result and m.department})


def bundle_rating_events(
    bundle_id: str,
    members: Sequence[Member],
    *,
    rating: Rating,
    comment: str | None,
    at: datetime,
) -> list[Event]:
    """One rating for the bundle: a `gov.case.rated.v1` per member with a result (each
    counted for its department, whose follow-up a bad one opens), then `gov.bundle.rated.v1`."""
    events: list[Event] = [
        CaseRated(
            case_id=m.case_id, bundle_id=bundle_id, rating=rating, comment=comment, rated_at=at
        )
        for m in members
        if m.has_result
    ]
    events.append(
        BundleRated(
            bundle_id=bundle_id,
            rating=rating,
            comment=comment,
            rated_at=at,
            departments=rated_departments(members),
        )
    )
    return events
