"""What a case event says about its case, remembered per case, and the filters over it.

Shared by `tongban tail` (services.cli.ops) and the operator console's live stream
(services.console). Pure: no Kafka, no web framework.

Facts an event carries (all optional, several places per fact because each event type
names things its own way):
- department: the `ce_handledby` header, `data.department`, `data.route.handled_by`;
- office: `data.application.office_code`, `data.intake_office`, `data.route.intake_office`,
  `data.office_code`, `data.handover.office_code`, and `online` for an online application;
- division: the applicant's `division_code`;
- path: `data.route.path`;
- bundle: `data.bundle_id` (every event of a bundle's member, and the bundle's own events on
  `bundle.v1`, DESIGN.md §8);
- partner region (DESIGN.md §9): a case taken here for a partner's applicant is routed on path
  `cross_region` with `handled_by` the partner's city code (this region is its origin); a case
  adopted from a partner is submitted with `data.origin.city_code`, and the origin's steps
  imported here carry the `ce_fromcity` header (this region handles it);
- district: the district of each office, division and department above, resolved through the
  catalog when matching (a street lies in the district that lists it). Codes are never taken
  apart: `YZ0101` is in `YZ01` only because the catalog says so.

Most events of a case name only some of these (`gov.case.closed.v1` carries only the case id),
so `CaseMemory` remembers what earlier events of the same case showed, and the filters look at
everything known about the case. A filter with several values matches any of them; different
filters must all match. A value no case can have (an unknown path or district) simply matches
nothing here; refusing it is the caller's business.
"""

from __future__ import annotations

import fnmatch
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from contracts.common import CaseStatus, Path
from services.common.logs import PERSONAL_KEYS, mask_name, mask_personal_data
from services.policy.catalog_index import CatalogIndex

_VERSION_SUFFIX = re.compile(r"\.v\d+$")


# --------------------------------------------------------------------------- type names


def short_type(event_type: str | None) -> str:
    """`gov.case.routed.v1` -> `routed`; `gov.catalog.published.v1` -> `catalog.published`."""
    if not event_type:
        return "?"
    name = _VERSION_SUFFIX.sub("", event_type)
    for prefix in ("gov.case.", "gov."):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


_STATUSES = {s.value for s in CaseStatus}
_STATUS_OF_SHORT = {"notified": CaseStatus.awaiting_supplement.value}


def status_after(event_type: str | None) -> str | None:
    """The case status an event of this type sets, if it sets one (DESIGN.md §4)."""
    short = short_type(event_type)
    if short in _STATUS_OF_SHORT:
        return _STATUS_OF_SHORT[short]
    return short if short in _STATUSES else None


def type_matches(event_type: str | None, pattern: str) -> bool:
    """A full type or glob (`gov.case.routed.v1`, `gov.case.*`) or a short name or glob
    (`routed`, `route*`, `sla_warning`)."""
    if not event_type:
        return False
    return fnmatch.fnmatchcase(event_type, pattern) or fnmatch.fnmatchcase(
        short_type(event_type), pattern
    )


# --------------------------------------------------------------------------- masking


def mask_event_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of event data fit for an operator's screen: every personal field masked.

    `mask_personal_data` knows `*_id_number`, `*_phone` and the personal names and addresses
    of the contracts; any other `*_address` (`home_address`) is a person's address too."""
    return mask_personal_data(_mask_addresses(data))


def _mask_addresses(value: Any, key: str = "") -> Any:
    if isinstance(value, Mapping):
        return {k: _mask_addresses(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_addresses(v, key) for v in value]
    if isinstance(value, str) and key.endswith("_address") and key not in PERSONAL_KEYS:
        return mask_name(value)
    return value


# --------------------------------------------------------------------------- facts of a case


@dataclass(frozen=True)
class Facts:
    """What is known about one case; empty fields are not known (yet)."""

    departments: frozenset[str] = frozenset()
    offices: frozenset[str] = frozenset()
    divisions: frozenset[str] = frozenset()  # the applicant's jurisdiction
    paths: frozenset[str] = frozenset()
    channel: str | None = None  # known once an event (or intake) showed the application
    bundles: frozenset[str] = frozenset()  # the bundle the case is a member of (§8)
    partners: frozenset[str] = frozenset()  # city codes of the partner regions it crosses to (§9)
    # this region's part in a case across regions: `origin` (taken here) or `handler`
    xregion_role: str | None = None

    def union(self, other: Facts) -> Facts:
        return Facts(
            departments=self.departments | other.departments,
            offices=self.offices | other.offices,
            divisions=self.divisions | other.divisions,
            paths=self.paths | other.paths,
            channel=other.channel or self.channel,
            bundles=self.bundles | other.bundles,
            partners=self.partners | other.partners,
            xregion_role=other.xregion_role or self.xregion_role,
        )

    def districts(self, catalog: CatalogIndex | None) -> frozenset[str]:
        """Every district the case touches: where it was taken, where the applicant is, and
        where it is decided (a municipal department touches none). No catalog: none."""
        if catalog is None:
            return frozenset()
        divisions = set(self.divisions)
        divisions.update(o.division for c in self.offices if (o := catalog.offices.get(c)))
        divisions.update(d.division for c in self.departments if (d := catalog.departments.get(c)))
        return frozenset(x for v in divisions if (x := catalog.district_of(v)))

    def view(self, catalog: CatalogIndex | None) -> dict[str, Any]:
        return {
            "offices": sorted(self.offices),
            "departments": sorted(self.departments),
            "districts": sorted(self.districts(catalog)),
            "path": ",".join(sorted(self.paths)) or None,
            "bundle": ",".join(sorted(self.bundles)) or None,
            "partner": ",".join(sorted(self.partners)) or None,
            "xregion_role": self.xregion_role,
        }


def _get(data: Mapping[str, Any] | None, *path: str) -> str | None:
    node: Any = data
    for part in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node if isinstance(node, str) and node else None


def _present(*values: str | None) -> frozenset[str]:
    return frozenset(v for v in values if v)


def _online(channel: str | None) -> str | None:
    return "online" if channel == "online" else None


def _across_regions(
    route_path: str | None, handled_by: str | None, origin_city: str | None, fromcity: str | None
) -> tuple[frozenset[str], str | None]:
    """The partner regions a case crosses to and this region's part in it (§9)."""
    if route_path == Path.cross_region:
        return _present(handled_by), "origin"
    handled_for = _present(origin_city, fromcity)
    return handled_for, "handler" if handled_for else None


def facts_of(
    data: Mapping[str, Any] | None, handledby: str | None = None, fromcity: str | None = None
) -> Facts:
    """What one event (its data, its `ce_handledby` and `ce_fromcity` headers) says about its
    case. An event on this region's case topics with `ce_fromcity` set was imported from the
    partner region the case came from."""
    channel = _get(data, "application", "channel")
    partners, role = _across_regions(
        _get(data, "route", "path"),
        _get(data, "route", "handled_by"),
        _get(data, "origin", "city_code"),
        fromcity,
    )
    return Facts(
        departments=_present(
            handledby, _get(data, "department"), _get(data, "route", "handled_by")
        ),
        offices=_present(
            _get(data, "application", "office_code"),
            _online(channel),
            _get(data, "intake_office"),
            _get(data, "route", "intake_office"),
            _get(data, "office_code"),
            _get(data, "handover", "office_code"),
        ),
        divisions=_present(_get(data, "application", "applicant", "division_code")),
        paths=_present(_get(data, "route", "path")),
        channel=channel,
        bundles=_present(_get(data, "bundle_id")),
        partners=partners,
        xregion_role=role,
    )


# A partner region's record addressed here (its `<alias>.xregion.out.v1`): the types whose
# very kind says this region's part in the case.
_ROLE_OF_PARTNER_TYPE = {
    "gov.case.forwarded.v1": "handler",  # a case the partner asks this region to decide
    "gov.case.adoption_refused.v1": "origin",  # the partner will not decide this region's case
}


def facts_of_partner_record(event_type: str | None, fromcity: str | None) -> Facts:
    """What a record a partner region sent here says about its case: the partner (its
    `ce_fromcity`) and, for a forwarded case or a refusal, this region's part. Nothing else:
    its offices, departments and routes are the partner's, whose codes may equal this
    region's; what else is known of the case comes from this region's own events."""
    role = _ROLE_OF_PARTNER_TYPE.get(event_type or "")
    return Facts(partners=_present(fromcity), xregion_role=role)


def facts_of_case_view(view: Mapping[str, Any]) -> Facts:
    """What intake's `GET /v1/cases/{id}` (the operator's masked view) says about the case
    (`origin`, for a case adopted from a partner, when intake's view shows it)."""
    channel = _get(view, "channel")
    partners, role = _across_regions(
        _get(view, "route", "path"),
        _get(view, "route", "handled_by"),
        _get(view, "origin", "city_code"),
        None,
    )
    return Facts(
        departments=_present(_get(view, "route", "handled_by")),
        offices=_present(_get(view, "office_code"), _online(channel)),
        divisions=_present(_get(view, "applicant", "division_code")),
        paths=_present(_get(view, "route", "path")),
        channel=channel,
        bundles=_present(_get(view, "bundle_id")),
        partners=partners,
        xregion_role=role,
    )


class CaseMemory:
    """The facts seen so far per case, for the most recent `capacity` cases (LRU)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._facts: OrderedDict[str, Facts] = OrderedDict()

    def __len__(self) -> int:
        return len(self._facts)

    def get(self, case_id: str) -> Facts | None:
        return self._facts.get(case_id)

    def learn(self, case_id: str | None, facts: Facts) -> Facts:
        """Remember `facts` for the case; return everything known about it (these included)."""
        if not case_id:
            return facts
        known = self._facts.pop(case_id, Facts()).union(facts)
        self._facts[case_id] = known
        while len(self._facts) > self.capacity:
            self._facts.popitem(last=False)
        return known


# --------------------------------------------------------------------------- filters


def _values(raw: str | None) -> frozenset[str]:
    """`"a, b"` -> {"a", "b"}."""
    if not raw:
        return frozenset()
    return frozenset(v.strip() for v in raw.split(",") if v.strip())


def _any_glob(value: str | None, patterns: Iterable[str]) -> bool:
    return value is not None and any(fnmatch.fnmatchcase(value, p) for p in patterns)


@dataclass(frozen=True)
class EventFilter:
    """Which events to show; an empty field means any. A case or a bundle may be a glob
    (`YZ-20261129-*`); a type is its full or short name, or a glob of either (see
    `type_matches`); department, office, district and path are exact. A bundle matches its
    own events and every event of its members."""

    cases: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    departments: frozenset[str] = frozenset()
    offices: frozenset[str] = frozenset()
    districts: frozenset[str] = frozenset()
    paths: frozenset[str] = frozenset()
    bundles: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        *,
        cases: Iterable[str] = (),
        types: Iterable[str] = (),
        departments: Iterable[str] = (),
        offices: Iterable[str] = (),
        districts: Iterable[str] = (),
        paths: Iterable[str] = (),
        bundles: Iterable[str] = (),
    ) -> EventFilter:
        return cls(
            frozenset(cases),
            frozenset(types),
            frozenset(departments),
            frozenset(offices),
            frozenset(districts),
            frozenset(paths),
            frozenset(bundles),
        )

    @classmethod
    def parse(
        cls,
        *,
        case: str | None = None,
        type: str | None = None,
        department: str | None = None,
        office: str | None = None,
        district: str | None = None,
        path: str | None = None,
        bundle: str | None = None,
    ) -> EventFilter:
        """Each filter as one value or a comma-separated list."""
        return cls(
            cases=_values(case),
            types=_values(type),
            departments=_values(department),
            offices=_values(office),
            districts=_values(district),
            paths=_values(path),
            bundles=_values(bundle),
        )

    @property
    def needs_facts(self) -> bool:
        """True when matching needs to know where a case was taken or is handled."""
        return bool(
            self.departments or self.offices or self.districts or self.paths or self.bundles
        )

    def missing_facts(self, facts: Facts | None) -> bool:
        """True when matching needs the case's application and no event showed it yet."""
        return self.needs_facts and (facts is None or facts.channel is None)

    def matches(
        self,
        *,
        case_id: str | None,
        event_type: str | None,
        facts: Facts | None,
        catalog: CatalogIndex | None,
    ) -> bool:
        """Does the event pass every filter? `facts` are all that is known of its case."""
        if self.cases and not _any_glob(case_id, self.cases):
            return False
        if self.types and not any(type_matches(event_type, p) for p in self.types):
            return False
        if not self.needs_facts:
            return True
        if facts is None:
            return False
        checks = (
            (self.departments, facts.departments),
            (self.offices, facts.offices),
            (self.paths, facts.paths),
        )
        if not all(not wanted or wanted & known for wanted, known in checks):
            return False
        if self.bundles and not any(_any_glob(b, self.bundles) for b in facts.bundles):
            return False
        return not self.districts or bool(self.districts & facts.districts(catalog))

    def describe(self) -> dict[str, list[str]]:
        return {
            name: sorted(values)
            for name, values in (
                ("case", self.cases),
                ("type", self.types),
                ("department", self.departments),
                ("office", self.offices),
                ("district", self.districts),
                ("path", self.paths),
                ("bundle", self.bundles),
            )
            if values
        }
