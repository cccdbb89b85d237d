"""Results of cases across regions (跨省通办, DESIGN.md §9), pure: no I/O.

A case across regions has two regions, and delivery plays a part in each:

- origin (this region's counter took the case; the partner region decides it): when the
  applicant chose `counter_pickup`, the partner's relayed `gov.case.result_issued.v1` makes
  this region's result row, held at the origin office (`held_at_origin`); the pickup there is
  an ordinary pickup and emits this region's own delivered and closed (relayed back by
  routing). Postal and electronic results the partner delivers itself: nothing here.
- handler (this region adopted the case from the partner): the result is issued and delivered
  as for any case, except a `counter_pickup` result, which waits at the origin office in the
  partner region: this region's pickup is refused (`pickup_at_origin`), and the origin's
  delivered and closed, imported onto this region's case.delivery.v1 (`fromcity` set), close
  the row without a new event (`closed_at_origin`); the rating taken there, imported the same
  way, counts for this region's deciding department too (handlers.rated_at_origin).

What the origin knows of its forwarded case comes from its own routed event (path
`cross_region`); what the handler knows of the origin, from the adopted case's submitted event
(its `origin`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from contracts.common import CaseStatus, DeliveryMethod, Path, ResultDocument, RouteLevel
from contracts.events import CaseClosed, CaseDelivered, CaseResultIssued, CaseRouted, CaseSubmitted
from services.common.refusals import FieldError, Refusal
from services.delivery.domain.results import APPROVED, DECISION_LETTER_KIND, DENIED


class Role(StrEnum):
    """This region's part in a case across regions."""

    origin = "origin"  # took it at its counter; the partner decides
    handler = "handler"  # adopted it from the partner; decides it here


@dataclass(frozen=True)
class CrossRegionCase:
    """A case across regions as delivery keeps it (a `cross_region_cases` row)."""

    case_id: str
    partner_city: str
    role: Role
    # The origin intake office: where a counter_pickup result is handed over (null: online).
    office_code: str | None
    delivery_method: DeliveryMethod
    item_code: str


def forwarded_case(routed: CaseRouted) -> CrossRegionCase | None:
    """The origin's record of a case it routed to a partner region; None for any other route."""
    route = routed.route
    if route.path is not Path.cross_region:
        return None
    return CrossRegionCase(
        case_id=routed.case_id,
        partner_city=route.handled_by,
        role=Role.origin,
        office_code=route.intake_office or routed.application.office_code,
        delivery_method=routed.application.delivery.method,
        item_code=routed.item.code,
    )


def adopted_case(submitted: CaseSubmitted) -> CrossRegionCase | None:
    """The handler's record of a case adopted from a partner region (a submitted event with
    `origin`); None for a case taken in this region."""
    origin = submitted.origin
    if origin is None:
        return None
    return CrossRegionCase(
        case_id=submitted.case_id,
        partner_city=origin.city_code,
        role=Role.handler,
        office_code=origin.office_code,
        delivery_method=submitted.application.delivery.method,
        item_code=submitted.application.item_code,
    )


# What a record's raw data (JSON, not yet validated) says, so the consumers of busy topics
# validate and keep only the few records about cases across regions.


def routes_to_partner(data: Any) -> bool:
    """A routed event's data whose route is the path `cross_region`."""
    route = data.get("route") if isinstance(data, dict) else None
    return isinstance(route, dict) and route.get("path") == Path.cross_region.value


def names_origin(data: Any) -> bool:
    """A submitted event's data naming an `origin`: a case adopted from a partner region."""
    return isinstance(data, dict) and data.get("origin") is not None


def outcome_of(document: ResultDocument) -> str:
    """approved | denied, read off the issued document: a denial issues a decision letter."""
    return DENIED if document.kind == DECISION_LETTER_KIND else APPROVED


def held_at_origin(case: CrossRegionCase, issued: CaseResultIssued) -> dict[str, Any] | None:
    """The origin's results row for the partner's issued result, waiting at the origin office
    for its pickup; None unless this region is the origin of a `counter_pickup` case (postal
    and electronic results the partner delivers; intake's timeline shows them).

    The deciding department is the partner region (its city code, level `partner`): the row's
    ratings are counted for it. The licence is the partner's and verified there, so the row
    names none and keeps no content of its own (the document, with its sha256, is shown)."""
    if case.role is not Role.origin or case.delivery_method is not DeliveryMethod.counter_pickup:
        return None
    return {
        "case_id": case.case_id,
        "outcome": outcome_of(issued.result),
        "status": CaseStatus.result_issued.value,
        "item_code": case.item_code,
        "result": issued.result.model_dump(mode="json"),
        "license_id": None,
        "sha256": issued.result.sha256 or "",
        "content": {},
        "delivery_method": DeliveryMethod.counter_pickup.value,
        "address": None,
        "tracking_number": None,
        "pickup_office": case.office_code,
        "intake_office": case.office_code,
        "department": case.partner_city,
        "level": RouteLevel.partner.value,
        "issued_at": issued.issued_at,
        "delivered_at": None,
        "closed_at": None,
        "license_type": None,
    }


def pickup_at_origin(case: CrossRegionCase) -> Refusal:
    """The handler's own pickup of a result that waits at the origin office, refused."""
    office = case.office_code or "its online channel"
    return Refusal(
        409,
        "pickup_at_origin",
        "The result is collected in the region that took the application",
        f"Case {case.case_id} was taken at office {office} in partner region "
        f"{case.partner_city} (跨省通办): the applicant collects the result there, and this "
        "region closes the case when that pickup arrives. Send the applicant there.",
        errors=(FieldError("office_code", f"the result waits at {office}"),),
        extra={"pickup_office": case.office_code, "origin_city": case.partner_city},
    )


# Where each imported step of the origin finds a held result, and what it records.
_OPEN_BEFORE: dict[type[CaseDelivered | CaseClosed], frozenset[CaseStatus]] = {
    CaseDelivered: frozenset({CaseStatus.result_issued}),
    CaseClosed: frozenset({CaseStatus.result_issued, CaseStatus.delivered}),
}


def closed_at_origin(
    step: CaseDelivered | CaseClosed,
) -> tuple[frozenset[CaseStatus], CaseStatus, dict[str, datetime]]:
    """The origin's pickup, imported here: the statuses of a held result it applies to, the
    status it leaves, and the times it records (the origin's own; a closed that arrives alone
    also counts as the delivery, see the handler)."""
    if isinstance(step, CaseDelivered):
        return (
            _OPEN_BEFORE[CaseDelivered],
            CaseStatus.delivered,
            {"delivered_at": step.delivered_at},
        )
    return _OPEN_BEFORE[CaseClosed], CaseStatus.closed, {"closed_at": step.closed_at}
