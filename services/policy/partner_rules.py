"""Intake's rules for an applicant of a partner region (跨省通办, DESIGN.md §9), pure.

The applicant's jurisdiction decides which catalog a counter reads the item code in: this
region's when the division lies here, else the partner catalog whose city, districts or streets
hold it (`catalog_of_applicant`); a division known nowhere stays with this region's catalog and
routing fails it `out_of_jurisdiction` as before. For a partner applicant intake refuses at
once what it can see:

  unknown_item        the code is not an item of the partner's catalog
  item_not_effective  the partner's item is not in force today
  not_cross_region    the partner's item is not `scope: cross_region`: apply there
  office_not_allowed  the online channel (cross-region online applications are made on the
                      partner's own online channel)
  unknown_office      a counter of no office of this region

Any municipal, district or street center of this region takes a partner's cross_region item;
every refusal names the partner region by its city name and code, in Chinese and English.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from contracts.catalog import Item, Scope
from contracts.common import Channel, Level
from services.policy.catalog_index import CatalogIndex
from services.policy.intake_rules import (
    OfficeDecision,
    guidance,
    item_in_force,
    refused_at_office,
    unknown_office_reason,
)


def catalog_of_applicant(
    own: CatalogIndex, partners: Mapping[str, CatalogIndex], division_code: str | None
) -> CatalogIndex | None:
    """The partner catalog the applicant's division lies in; None when it lies in this region,
    or in no partner known (then this region's catalog is read, as before §9)."""
    if not division_code or own.division_level(division_code) is not None:
        return None
    for city in sorted(partners):
        if partners[city].division_level(division_code) is not None:
            return partners[city]
    return None


def city_name(partner: CatalogIndex) -> str:
    """The partner's city name (its code when the catalog gives none)."""
    return partner.catalog.city.name or partner.city_code


def region_name(partner: CatalogIndex) -> str:
    """`澜州市（LZ）`: how a refusal names a partner region."""
    return f"{city_name(partner)}（{partner.city_code}）"


def cross_region_items(partner: CatalogIndex, on: date) -> list[Item]:
    """The partner's items a counter here may take on `on`: cross_region, in force."""
    return [
        item
        for item in partner.catalog.items
        if item.scope is Scope.cross_region and item_in_force(item, on)
    ]


@dataclass(frozen=True, slots=True)
class PartnerItemProblem:
    code: str  # unknown_item | item_not_effective | not_cross_region
    message: str


def partner_item_problems(
    partner: CatalogIndex, item_code: str, on: date
) -> tuple[Item | None, tuple[PartnerItemProblem, ...]]:
    """The partner's item read by its code, and why a counter here may not take it on `on`."""
    where = region_name(partner)
    city = partner.city_code
    item = partner.items.get(item_code)
    if item is None:
        return None, (
            PartnerItemProblem(
                "unknown_item",
                f"事项 {item_code} 不在{where}的目录中 / item {item_code!r} is not in the "
                f"catalog of partner region {city_name(partner)} ({city}); "
                f"GET /v1/items?city={city} lists its cross-region items",
            ),
        )
    problems = []
    if not item_in_force(item, on):
        window = f"{item.effective_from or '…'} ~ {item.effective_to or '…'}"
        problems.append(
            PartnerItemProblem(
                "item_not_effective",
                f"{where}的事项 {item.code} 在 {on} 不在有效期内（{window}）/ item {item.code} "
                f"of partner region {city_name(partner)} ({city}) is not in force on "
                f"{on} (effective {window})",
            )
        )
    if item.scope is not Scope.cross_region:
        problems.append(
            PartnerItemProblem(
                "not_cross_region",
                f"{where}的事项 {item.code} 不在跨省通办范围内，请到{where}办理或通过其网上办事"
                f"渠道申请 / item {item.code} of partner region {city_name(partner)} "
                f"({city}) is not offered across regions: apply in {city_name(partner)} "
                "or on its online channel",
            )
        )
    return item, tuple(problems)


def partner_office_allowed(
    own: CatalogIndex, partner: CatalogIndex, *, channel: Channel, office_code: str | None
) -> OfficeDecision:
    """May this channel/office take a partner's cross_region item? Every office of this region
    may; the online channel may not (the partner's own online channel takes it)."""
    where = guidance(own, frozenset(Level), online=False, applicant_division=None)
    name, city = city_name(partner), partner.city_code
    if channel is Channel.online:
        return refused_at_office(
            where,
            code="office_not_allowed",
            field="channel",
            reason=(
                f"跨省通办事项不能在本地网上申请，请通过{region_name(partner)}的网上办事渠道申请 / "
                f"a cross-region application is not made online here: apply on the online "
                f"channel of partner region {name} ({city}), or at a counter here"
            ),
        )
    office = own.offices.get(office_code) if office_code else None
    if office is None:
        return refused_at_office(
            where,
            code="unknown_office",
            field="office_code",
            reason=f"{unknown_office_reason(office_code)}（{region_name(partner)}的跨省通办事项 / "
            f"a cross-region item of {name} ({city}))",
        )
    return OfficeDecision(allowed=True, office=office)
