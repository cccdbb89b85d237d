"""Cases across regions at routing (DESIGN.md §9), pure: what goes to a partner region and what a
partner's refusal does here. No I/O; `handlers` reads the rows and writes the effects.

Guarantees this module decides (the handlers keep them by consuming through the inbox):
- a case event goes to at most one partner, the one `cross_region_cases` names for the case
  (or, for an adopted case's own submission, its `origin`), and only:
    role 'origin'  (taken here, decided there): this region's own later steps of the applicant
                   and the counter: withdrawn, supplemented, delivered, closed, rated;
    role 'handler' (adopted from there): every case event this region publishes about it;
- an event that came from another region (`fromcity` set and not this city: imported by
  intake) is never relayed, so nothing goes round the link twice;
- a partner's adoption_refused fails only a case routed here to that partner and still routed
  (a late or stray answer changes nothing), as `partner_refused` under rule R2-cross-region.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from contracts.common import Failure, Path
from contracts.events import (
    CaseAdoptionRefused,
    CaseClosed,
    CaseDelivered,
    CaseRated,
    CaseSupplemented,
    CaseWithdrawn,
)


class Role(StrEnum):
    """This region's part in a case across regions (the `cross_region_cases.role` column)."""

    origin = "origin"  # taken at this region's counter, decided by the partner
    handler = "handler"  # adopted from the partner (its origin), decided here


# An origin's own steps the handling region needs (DESIGN.md §9 point 4): the applicant's
# withdrawal and supplements, and the pickup at the origin office with its close and rating.
ORIGIN_STEPS = frozenset(
    model.TYPE for model in (CaseWithdrawn, CaseSupplemented, CaseDelivered, CaseClosed, CaseRated)
)

PARTNER_REFUSED = "partner_refused"


@dataclass(frozen=True, slots=True)
class PartnerCase:
    """A row of `cross_region_cases`."""

    partner_city: str
    role: Role


def relay_to(
    event_type: str,
    *,
    fromcity: str | None,
    own_city: str | None,
    case: PartnerCase | None,
    adopted_from: str | None = None,
) -> str | None:
    """The partner city this region's case event goes to, or None (not relayed).

    `case`: the case's `cross_region_cases` row, if any; `adopted_from`: the origin city of a
    submitted event that carries `origin` (its row may not be written yet)."""
    if fromcity is not None and fromcity != own_city:
        return None  # imported from a partner: it came from there
    if adopted_from is not None:
        return adopted_from
    if case is None:
        return None
    if case.role is Role.origin and event_type not in ORIGIN_STEPS:
        return None
    return case.partner_city


def refusal_applies(
    refused: CaseAdoptionRefused,
    *,
    status: str,
    route: Mapping[str, object] | None,
    forwarded_id: str | None = None,
) -> bool:
    """Does a partner's refusal answer this route? Only a case routed cross_region to the
    refusing city, and still routed (not already failed or re-routed elsewhere), and only the
    forwarding sent last (`forwarded_id`, when both sides name it): the refusal of a forged
    record bearing a real case id must not fail the genuine case."""
    if refused.forwarded_id and forwarded_id and refused.forwarded_id != forwarded_id:
        return False
    return (
        status == "routed"
        and route is not None
        and route.get("path") == Path.cross_region.value
        and route.get("handled_by") == refused.from_city
    )


def refusal_failure(refused: CaseAdoptionRefused) -> Failure:
    """The route failure a partner's refusal becomes: the case waits in triage here."""
    return Failure(
        code=PARTNER_REFUSED,
        explanation=(
            f"申请人所在地 {refused.from_city} 未接收此跨省通办案件"
            f"（{refused.code}：{refused.reason}），案件留待分拣处理 / "
            f"partner region {refused.from_city} refused the forwarded case "
            f"({refused.code}: {refused.reason}); it waits in triage"
        ),
    )
