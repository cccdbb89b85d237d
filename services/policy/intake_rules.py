"""Intake's rules over a catalog version (DESIGN.md §3), pure: whether an item is in force,
which levels' counters may take it, whether a channel or office may take it (with where to go
instead), and which materials it knows and requires.

Intake refuses a submission by them before a case exists (`services/intake/validation.py`);
routing applies the same `item_in_force` and `office_allowed` as its rules R1 and R3, and the
catalog's validation checks intake levels with `effective_intake_levels`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from contracts.catalog import LEVEL_OFFICE, OFFICE_LEVEL, Item, Office, OfficeKind
from contracts.common import Category, Channel, Level, Mode
from services.policy.catalog_index import CatalogIndex

LEVEL_ZH = {Level.municipal: "市级", Level.district: "区级", Level.street: "街镇"}


_DEFAULT_INTAKE = {Category.enterprise: Level.district, Category.individual: Level.street}


def effective_intake_levels(item: Item) -> frozenset[Level]:
    """The levels whose counters may take the item (the municipal center always may).

    Explicit `intake_levels` win. Absent, the two concentrations: enterprise -> district,
    individual -> street; except a `municipal` item, which has no basic-level path yet and is
    taken only at the municipal center (DESIGN.md §1)."""
    if item.intake_levels is not None:
        return frozenset(item.intake_levels)
    if item.mode is Mode.municipal:
        return frozenset()
    return frozenset({_DEFAULT_INTAKE[item.category]})


def item_in_force(item: Item, on: date) -> bool:
    """In force from `effective_from` to `effective_to`, both inclusive; None is open-ended."""
    if item.effective_from is not None and on < item.effective_from:
        return False
    return item.effective_to is None or on <= item.effective_to


def unknown_material(item: Item, code: str) -> str | None:
    """Why `code` is not one of the item's materials, or None when it is one."""
    if any(m.code == code for m in item.materials):
        return None
    valid = ", ".join(m.code for m in item.materials) or "(none)"
    return f"material {code!r} is not one of item {item.code}'s materials; valid codes: {valid}"


def missing_materials(item: Item, given: Iterable[str]) -> tuple[str, ...]:
    """The required materials not among `given`, in catalog order: what the one-time
    notification (一次性告知) asks for."""
    provided = set(given)
    return tuple(m.code for m in item.materials if m.required and m.code not in provided)


KIND_ZH = {
    OfficeKind.municipal_center: "市级行政服务中心",
    OfficeKind.district_center: "区级行政服务中心",
    OfficeKind.street_center: "街镇社区事务受理服务中心",
}
MAX_SUGGESTED_OFFICES = 20


@dataclass(frozen=True, slots=True)
class OfficeGuidance:
    """Where a refused applicant can go instead."""

    levels: tuple[Level, ...]
    office_kinds: tuple[OfficeKind, ...]
    offices: tuple[str, ...]  # nearest to the applicant first (at most MAX_SUGGESTED_OFFICES)
    online: bool  # the online channel takes the item

    def as_dict(self) -> dict[str, Any]:
        return {
            "levels": [level.value for level in self.levels],
            "office_kinds": [kind.value for kind in self.office_kinds],
            "offices": list(self.offices),
            "online": self.online,
        }


@dataclass(frozen=True, slots=True)
class OfficeDecision:
    allowed: bool
    code: str | None = None  # office_not_allowed | unknown_office when refused
    field: str | None = None  # the submission field at fault: channel | office_code
    message: str = ""
    office: Office | None = None  # the intake office (None on the online channel)
    guidance: OfficeGuidance | None = None


def _taking_levels(item: Item) -> frozenset[Level]:
    if item.mode is Mode.online:
        return frozenset(Level)
    return effective_intake_levels(item)


def guidance(
    index: CatalogIndex,
    intake_levels: frozenset[Level],
    *,
    online: bool,
    applicant_division: str | None,
) -> OfficeGuidance:
    """Where an application refused at an office can go: the offices of `intake_levels` (and
    the municipal center, which takes anything), nearest to the applicant first."""
    levels = tuple(level for level in Level if level in intake_levels | {Level.municipal})
    street = applicant_division if applicant_division in index.street_district else None
    district = index.district_of(applicant_division) if applicant_division else None

    def rank(office: Office) -> tuple[int, str]:
        if street is not None and office.division == street:
            return 0, office.code
        if district is not None and office.division == district:
            return 1, office.code
        if district is not None and index.district_of(office.division) == district:
            return 2, office.code
        if office.kind is OfficeKind.municipal_center:
            return 3, office.code
        return 4, office.code

    candidates = sorted((o for level in levels for o in index.offices_by_level[level]), key=rank)
    return OfficeGuidance(
        levels=levels,
        office_kinds=tuple(LEVEL_OFFICE[level] for level in levels),
        offices=tuple(o.code for o in candidates[:MAX_SUGGESTED_OFFICES]),
        online=online,
    )


def _where_instead(guidance: OfficeGuidance) -> str:
    kinds_zh = "、".join(KIND_ZH[k] for k in guidance.office_kinds)
    kinds_en = ", ".join(k.value for k in guidance.office_kinds)
    offices = ", ".join(guidance.offices) or "-"
    return f"可前往{kinds_zh}：{offices} / it may be taken at: {kinds_en} ({offices})"


def refused_at_office(
    where: OfficeGuidance,
    *,
    code: str,
    field: str,
    reason: str,
    office: Office | None = None,
) -> OfficeDecision:
    """A refusal: why (`reason`), then where the application may be taken instead."""
    return OfficeDecision(
        allowed=False,
        code=code,
        field=field,
        message=f"{reason}; {_where_instead(where)}",
        office=office,
        guidance=where,
    )


def unknown_office_reason(office_code: str | None) -> str:
    """Why a counter application names no office the catalog knows."""
    if office_code:
        return f"收件机构 {office_code} 不在目录中 / office {office_code!r} is not in the catalog"
    return "窗口收件须填写收件机构 / a counter submission names its office_code"


def _refused(
    index: CatalogIndex,
    item: Item,
    applicant_division: str | None,
    *,
    code: str,
    field: str,
    reason: str,
    office: Office | None = None,
) -> OfficeDecision:
    """A refusal: why (`reason`), then where the item may be taken instead."""
    where = guidance(
        index,
        _taking_levels(item),
        online=item.mode is Mode.online,
        applicant_division=applicant_division,
    )
    return refused_at_office(where, code=code, field=field, reason=reason, office=office)


def office_allowed(
    index: CatalogIndex,
    item: Item,
    *,
    channel: Channel,
    office_code: str | None,
    applicant_division: str | None = None,
) -> OfficeDecision:
    """May this channel/office take this item (DESIGN.md §3)? The online channel takes only
    `online` items; at a counter an `online` item is taken anywhere (assisted online), the
    municipal center takes any item, and otherwise the office's level must be among the item's
    intake levels. A refusal carries guidance, nearest to `applicant_division` first."""
    if channel is Channel.online:
        if item.mode is Mode.online:
            return OfficeDecision(allowed=True)
        return _refused(
            index,
            item,
            applicant_division,
            code="office_not_allowed",
            field="channel",
            reason=(
                f"事项 {item.code} 不是全程网办事项，不能在线申请 / item {item.code} is not a "
                "fully-online item and cannot be applied for online"
            ),
        )
    office = index.offices.get(office_code) if office_code else None
    if office is None:
        return _refused(
            index,
            item,
            applicant_division,
            code="unknown_office",
            field="office_code",
            reason=unknown_office_reason(office_code),
        )
    level = OFFICE_LEVEL[office.kind]
    if (
        item.mode is Mode.online
        or office.kind is OfficeKind.municipal_center
        or level in effective_intake_levels(item)
    ):
        return OfficeDecision(allowed=True, office=office)
    return _refused(
        index,
        item,
        applicant_division,
        code="office_not_allowed",
        field="office_code",
        office=office,
        reason=(
            f"{KIND_ZH[office.kind]} {office.code} 不能收取事项 {item.code}（{LEVEL_ZH[level]}"
            f"不在收件层级内）/ {office.kind.value} {office.code} may not take item {item.code} "
            f"({level.value} is not among its intake levels)"
        ),
    )
