"""Cases across regions at intake (跨省通办, DESIGN.md §9), pure: whether this region adopts a
case a partner forwarded, the application as adopted, and which of a partner's relayed events
are imported onto this region's own topics.

A forwarded case is adopted when every check holds, and refused with the first that fails:

  handover_invalid     the origin office's handover does not verify (forged, altered after
                       signing, unknown office or key), checked by services.common.handover
  unknown_item         the item code is not in this region's catalog
  item_not_effective   the item is not in force on the day the applicant submitted it
  not_cross_region     the item is not `scope: cross_region` here
  out_of_jurisdiction  the applicant's division is not in this region
  case_id_in_use       a case of this id, not adopted from that origin, is here already
  no_municipal_center  this region's catalog has no municipal center to take the case at

Adopted, the case is taken as if at this region's municipal center (its office code, the
counter channel), so this region's routing, approval and delivery treat it as any case.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date

from contracts.catalog import Office, OfficeKind, Scope
from contracts.common import Application, Channel
from contracts.events import (
    CaseClosed,
    CaseDelivered,
    CaseForwarded,
    CaseRated,
    CaseSupplemented,
    CaseWithdrawn,
)
from services.policy.catalog_index import CatalogIndex
from services.policy.intake_rules import item_in_force

# The origin's own steps of an adopted case, imported onto this region's topic of their type
# (DESIGN.md §9 point 9): approval stops the clock on a withdrawal, delivery closes a pickup.
IMPORTED_TYPES = frozenset(
    {
        CaseWithdrawn.TYPE,
        CaseSupplemented.TYPE,
        CaseDelivered.TYPE,
        CaseClosed.TYPE,
        CaseRated.TYPE,
    }
)

HANDOVER_INVALID = "handover_invalid"
CASE_ID_IN_USE = "case_id_in_use"
NO_MUNICIPAL_CENTER = "no_municipal_center"


@dataclass(frozen=True, slots=True)
class AdoptionRefusal:
    code: str
    reason: str  # names offices, items, divisions' regions: never the applicant


def adoption_refusal(
    forwarded: CaseForwarded,
    index: CatalogIndex,
    *,
    handover_problem: str | None,
    submitted_on: date,
) -> AdoptionRefusal | None:
    """Why this region (catalog `index`) does not adopt the forwarded case, or None when it
    does. `handover_problem`: the handover check's finding (None: it verified);
    `submitted_on`: the city's date of the applicant's submission at the origin."""
    city = index.city_code
    if handover_problem is not None:
        return AdoptionRefusal(
            HANDOVER_INVALID,
            f"委托收件交接验证未通过 / the handover of office {forwarded.handover.office_code} "
            f"does not verify: {handover_problem}",
        )
    code = forwarded.item_code
    item = index.items.get(code)
    if item is None:
        return AdoptionRefusal(
            "unknown_item",
            f"事项 {code} 不在 {city} 的目录中 / item {code!r} is not in the catalog of {city}",
        )
    if not item_in_force(item, submitted_on):
        window = f"{item.effective_from or '…'} ~ {item.effective_to or '…'}"
        return AdoptionRefusal(
            "item_not_effective",
            f"事项 {code} 在 {submitted_on} 不在有效期内 / item {code} of {city} was not in "
            f"force on {submitted_on} (effective {window})",
        )
    if item.scope is not Scope.cross_region:
        return AdoptionRefusal(
            "not_cross_region",
            f"事项 {code} 不在 {city} 的跨省通办范围内 / item {code} of {city} is not "
            "offered across regions",
        )
    if index.division_level(forwarded.application.applicant.division_code) is None:
        return AdoptionRefusal(
            "out_of_jurisdiction",
            f"申请人所在区划不属于 {city} / the applicant's division is not in {city}",
        )
    return None


def municipal_center(index: CatalogIndex) -> Office | None:
    """The office an adopted case is taken at: the municipal center of the city itself, else
    any municipal center of the catalog."""
    centers = [o for o in index.offices.values() if o.kind is OfficeKind.municipal_center]
    own = [o for o in centers if o.division == index.city_code]
    return next(iter(own or centers), None)


def adopted_application(application: Application, office_code: str) -> Application:
    """The application as this region takes it: at its municipal center, over the counter;
    applicant, materials (their hashes) and delivery as the origin took them."""
    return application.model_copy(update={"office_code": office_code, "channel": Channel.counter})


def import_outbox_id(event_id: str, from_city: str) -> str:
    """The outbox row of an imported event: its own id (the event keeps its `ce_id`)."""
    return hashlib.sha256(f"{event_id}<{from_city}".encode()).hexdigest()
