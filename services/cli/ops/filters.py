"""Which events `tongban tail` shows: pure functions over an `EventView`.

Facts an event carries (all optional, several places per fact because each event type
names things its own way):
- department: the `ce_handledby` header, `data.department`, `data.route.handled_by`;
- office: `data.application.office_code`, `data.intake_office`, `data.route.intake_office`,
  `data.office_code`, `data.handover.office_code`;
- district: the district of each office above, of the applicant's `division_code` and of each
  department above, resolved through the catalog (a street lies in the district that lists it).
  Codes are never taken apart: `YZ0101` is in `YZ01` only because the catalog says so;
- path: `data.route.path`.

Most events of a case name only some of these (an `approved` event names the department, not
the office or the path). `CaseMemory` remembers what earlier events of the same case showed
during this tail, so `--path delegated` keeps following a case after its `routed` event.
A filter given several times matches any of its values; different filters must all match.
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from contracts.common import Mode
from services.cli.ops.events import EventView, short_type
from services.common.catalog import CatalogIndex

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class DistrictMap:
    """Catalog lookups from office, department and division codes to district codes."""

    districts: frozenset[str]
    office_district: Mapping[str, str] = field(default_factory=dict)
    department_district: Mapping[str, str] = field(default_factory=dict)
    division_district: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, index: CatalogIndex) -> DistrictMap:
        def district(division: str) -> str | None:
            return index.district_of(division)

        return cls(
            districts=frozenset(index.districts),
            office_district={
                code: d for code, o in index.offices.items() if (d := district(o.division))
            },
            department_district={
                code: d for code, dep in index.departments.items() if (d := district(dep.division))
            },
            division_district={
                **{code: code for code in index.districts},
                **index.street_district,
            },
        )


@dataclass(frozen=True)
class Facts:
    departments: frozenset[str] = frozenset()
    offices: frozenset[str] = frozenset()
    districts: frozenset[str] = frozenset()
    paths: frozenset[str] = frozenset()

    def union(self, other: Facts) -> Facts:
        return Facts(
            self.departments | other.departments,
            self.offices | other.offices,
            self.districts | other.districts,
            self.paths | other.paths,
        )


def _get(data: Mapping[str, Any] | None, *path: str) -> str | None:
    node: Any = data
    for part in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node if isinstance(node, str) and node else None


def _present(*values: str | None) -> frozenset[str]:
    return frozenset(v for v in values if v)


def facts_of(view: EventView, districts: DistrictMap | None = None) -> Facts:
    data = view.data
    departments = _present(
        view.headers.get("ce_handledby"),
        _get(data, "department"),
        _get(data, "route", "handled_by"),
    )
    offices = _present(
        _get(data, "application", "office_code"),
        _get(data, "intake_office"),
        _get(data, "route", "intake_office"),
        _get(data, "office_code"),
        _get(data, "handover", "office_code"),
    )
    found: set[str] = set()
    if districts is not None:
        found.update(
            districts.office_district[o] for o in offices if o in districts.office_district
        )
        found.update(
            districts.department_district[d]
            for d in departments
            if d in districts.department_district
        )
        division = _get(data, "application", "applicant", "division_code")
        if division is not None and division in districts.division_district:
            found.add(districts.division_district[division])
    return Facts(
        departments=departments,
        offices=offices,
        districts=frozenset(found),
        paths=_present(_get(data, "route", "path")),
    )


def type_matches(event_type: str | None, pattern: str) -> bool:
    """A full type or glob (`gov.case.routed.v1`, `gov.case.*`) or a short name or glob
    (`routed`, `route*`, `sla_warning`)."""
    if not event_type:
        return False
    return fnmatch.fnmatchcase(event_type, pattern) or fnmatch.fnmatchcase(
        short_type(event_type), pattern
    )


def _any_glob(value: str | None, patterns: Iterable[str]) -> bool:
    return value is not None and any(fnmatch.fnmatchcase(value, p) for p in patterns)


@dataclass(frozen=True)
class Filters:
    cases: tuple[str, ...] = ()  # case ids or globs
    types: tuple[str, ...] = ()  # see type_matches
    departments: tuple[str, ...] = ()
    offices: tuple[str, ...] = ()
    districts: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()

    @property
    def needs_facts(self) -> bool:
        return bool(self.departments or self.offices or self.districts or self.paths)

    @property
    def needs_catalog(self) -> bool:
        return bool(self.districts)


class FilterError(ValueError):
    """A filter value that can never match (a typo, an unknown district or path)."""


def check_filters(filters: Filters, districts: DistrictMap | None = None) -> None:
    paths = {m.value for m in Mode}
    bad_paths = sorted(set(filters.paths) - paths)
    if bad_paths:
        raise FilterError(f"unknown path {bad_paths}; choose from {', '.join(sorted(paths))}")
    if filters.districts:
        if districts is None:
            raise FilterError("--district needs the catalog (--catalog FILE or catalog.v1)")
        unknown = sorted(set(filters.districts) - districts.districts)
        if unknown:
            raise FilterError(
                f"unknown district {unknown}; the catalog's districts are "
                f"{', '.join(sorted(districts.districts)) or '(none)'}"
            )


def matches(view: EventView, facts: Facts, filters: Filters) -> bool:
    """Does the event pass every filter? `facts` are the event's (and its case's) facts."""
    if filters.cases and not _any_glob(view.case_id, filters.cases):
        return False
    if filters.types and not any(type_matches(view.type, p) for p in filters.types):
        return False
    checks: tuple[tuple[tuple[str, ...], frozenset[str]], ...] = (
        (filters.departments, facts.departments),
        (filters.offices, facts.offices),
        (filters.districts, facts.districts),
        (filters.paths, facts.paths),
    )
    return all(not wanted or bool(set(wanted) & known) for wanted, known in checks)


class CaseMemory:
    """The facts seen so far per case, for the most recent `capacity` cases (LRU)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._facts: OrderedDict[str, Facts] = OrderedDict()

    def __len__(self) -> int:
        return len(self._facts)

    def observe(self, case_id: str | None, facts: Facts) -> Facts:
        """Remember `facts` for the case; return everything known about it (this event's
        facts included)."""
        if not case_id:
            return facts
        known = self._facts.pop(case_id, Facts()).union(facts)
        self._facts[case_id] = known
        while len(self._facts) > self.capacity:
            self._facts.popitem(last=False)
        return known


def select(
    view: EventView,
    filters: Filters,
    *,
    memory: CaseMemory | None = None,
    districts: DistrictMap | None = None,
) -> bool:
    """The whole decision for one event: its facts, merged with its case's, then `matches`."""
    if not filters.needs_facts:
        return matches(view, Facts(), filters)
    facts = facts_of(view, districts)
    if memory is not None:
        facts = memory.observe(view.case_id, facts)
    return matches(view, facts, filters)
