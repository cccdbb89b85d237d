"""One catalog version with dict lookups (DESIGN.md §3): built once per version, then
read-only; the rules of `services.policy` read the catalog through it."""

from __future__ import annotations

from contracts.catalog import OFFICE_LEVEL, Bundle, Catalog, Department, Item, Office
from contracts.common import Level
from services.common.workdays import WorkCalendar


class CatalogIndex:
    """One catalog version with dict lookups; built once per version, then read-only."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.city_code = catalog.city.code
        self.items: dict[str, Item] = {}
        for item in catalog.items:
            self.items.setdefault(item.code, item)
        self.offices: dict[str, Office] = {}
        for office in catalog.offices:
            self.offices.setdefault(office.code, office)
        self.departments: dict[str, Department] = {}
        self.units: dict[tuple[str, Level, str], Department] = {}
        for dept in catalog.departments:
            self.departments.setdefault(dept.code, dept)
            self.units.setdefault((dept.line, dept.level, dept.division), dept)
        self.districts = {d.code: d for d in catalog.districts}
        self.street_district: dict[str, str] = {
            s.code: d.code for d in catalog.districts for s in d.streets
        }
        self.calendar = WorkCalendar.of(catalog.calendar)
        self.bundles: dict[str, Bundle] = {}
        for bundle in catalog.bundles:
            self.bundles.setdefault(bundle.code, bundle)
        self.offices_by_level: dict[Level, tuple[Office, ...]] = {
            level: tuple(o for o in self.offices.values() if OFFICE_LEVEL[o.kind] is level)
            for level in Level
        }

    def division_level(self, code: str) -> Level | None:
        """municipal (the city itself), district, street, or None (not in this city)."""
        if code == self.city_code:
            return Level.municipal
        if code in self.districts:
            return Level.district
        if code in self.street_district:
            return Level.street
        return None

    def district_of(self, division_code: str) -> str | None:
        """The district a district or street code lies in; None for the city or unknown codes."""
        if division_code in self.districts:
            return division_code
        return self.street_district.get(division_code)

    def department(self, *, line: str, level: Level, division: str) -> Department | None:
        return self.units.get((line, level, division))
