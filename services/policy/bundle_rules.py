"""Bundles (一件事一次办, DESIGN.md §8) over a catalog version, pure: whether a bundle is in force
on a day, and whether a channel or office may take it (its one window).

A bundle is taken at one window for all its members, so the window is the bundle's, not each
item's: a counter at a level among the bundle's `intake_levels` (absent: enterprise -> district,
individual -> street, the two concentrations), or the municipal center, which takes anything.
The online channel takes a bundle only when every member it creates is a fully-online item.
Intake refuses by `bundle_office_allowed` before a member exists; routing applies it as rule
R3 to a member whose submission names a bundle code its catalog version knows.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

from contracts.catalog import OFFICE_LEVEL, Bundle, Item, OfficeKind
from contracts.common import Category, Channel, Level, Mode
from services.policy.catalog_index import CatalogIndex
from services.policy.intake_rules import (
    KIND_ZH,
    LEVEL_ZH,
    OfficeDecision,
    guidance,
    item_in_force,
    refused_at_office,
    unknown_office_reason,
)

_DEFAULT_INTAKE = {Category.enterprise: Level.district, Category.individual: Level.street}


def bundle_intake_levels(bundle: Bundle) -> frozenset[Level]:
    """The levels whose counters take the bundle (the municipal center always does)."""
    if bundle.intake_levels is not None:
        return frozenset(bundle.intake_levels)
    return frozenset({_DEFAULT_INTAKE[bundle.category]})


def bundle_window_holds(bundle: Bundle, on: date) -> bool:
    """The bundle's own dates, both inclusive; None is open-ended."""
    if bundle.effective_from is not None and on < bundle.effective_from:
        return False
    return bundle.effective_to is None or on <= bundle.effective_to


def bundle_in_force(bundle: Bundle, members: Iterable[Item | None], on: date) -> bool:
    """Offered on `on`: its own dates hold and so do those of every member it creates (a
    bundle without `effective_from` is offered only on days all of them are in force; one
    with a start was checked at load to promise its members from then)."""
    return bundle_window_holds(bundle, on) and all(
        item is not None and item_in_force(item, on) for item in members
    )


def bundle_office_allowed(
    index: CatalogIndex,
    bundle: Bundle,
    members: Iterable[Item],
    *,
    channel: Channel,
    office_code: str | None,
    applicant_division: str | None = None,
) -> OfficeDecision:
    """May this channel/office take the bundle with these (created) members? See the module
    docstring; a refusal carries where to go instead, nearest to `applicant_division` first."""
    items = list(members)
    online = all(item.mode is Mode.online for item in items)
    levels = bundle_intake_levels(bundle)
    where = guidance(index, levels, online=online, applicant_division=applicant_division)
    if channel is Channel.online:
        if online:
            return OfficeDecision(allowed=True)
        offline = ", ".join(item.code for item in items if item.mode is not Mode.online)
        return refused_at_office(
            where,
            code="office_not_allowed",
            field="channel",
            reason=(
                f"一件事 {bundle.code} 含非全程网办事项（{offline}），不能在线申请 / bundle "
                f"{bundle.code} has members that are not fully online ({offline}) and cannot "
                "be applied for online"
            ),
        )
    office = index.offices.get(office_code) if office_code else None
    if office is None:
        return refused_at_office(
            where,
            code="unknown_office",
            field="office_code",
            reason=unknown_office_reason(office_code),
        )
    level = OFFICE_LEVEL[office.kind]
    if office.kind is OfficeKind.municipal_center or level in levels:
        return OfficeDecision(allowed=True, office=office)
    return refused_at_office(
        where,
        code="office_not_allowed",
        field="office_code",
        office=office,
        reason=(
            f"{KIND_ZH[office.kind]} {office.code} 不能收取一件事 {bundle.code}（{LEVEL_ZH[level]}"
            f"不在收件层级内）/ {office.kind.value} {office.code} may not take bundle "
            f"{bundle.code} ({level.value} is not among its intake levels)"
        ),
    )
