"""What the operator console shows of one Kafka record, and whether it passes the filters.

Pure logic, no I/O: the live stream (services.console.kafka_views) parses a record, lets
`CaseFacts` learn what the event says about its case (intake office, applicant's division,
handling department, path), masks the personal data, and asks `StreamFilter.matches`.

Most case events do not repeat where a case was taken or who handles it (`gov.case.closed.v1`
carries only the case id), so the filters on department, office, district and path look at
what the console has learned about the case from its earlier events, or from intake's view
of the case when the stream started after them.
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from contracts.events import (
    APPROVAL_TOPIC,
    DECISIONS_TOPIC,
    DELIVERY_TOPIC,
    DLQ_TOPIC,
    INTAKE_TOPIC,
    ROUTING_TOPIC,
)
from services.common.catalog import CatalogIndex
from services.common.logs import (
    PERSONAL_KEYS,
    mask_id_number,
    mask_name,
    mask_personal_data,
    mask_phone,
)

TYPE_PREFIX = "gov.case."
FAMILY_OF_TOPIC = {
    INTAKE_TOPIC: "intake",
    ROUTING_TOPIC: "routing",
    DECISIONS_TOPIC: "decisions",
    APPROVAL_TOPIC: "approval",
    DELIVERY_TOPIC: "delivery",
    DLQ_TOPIC: "dlq",
}
# Events an operator must not miss: coloured as alerts whatever topic they come from.
ALERT_TYPES = frozenset(
    {
        "gov.case.route_failed.v1",
        "gov.case.denied.v1",
        "gov.case.overdue.v1",
        "gov.case.deadline_unknown.v1",
        "gov.case.handover_refused.v1",
    }
)
WARNING_TYPES = frozenset({"gov.case.sla_warning.v1", "gov.case.followup_opened.v1"})

# Payload keys that end like a personal key (`applicant_id_number`, `delivery_address`) are
# personal too; `mask_personal_data` knows the bare names only (as `tongban tail` masks them).
_SUFFIX_MASKS = (
    ("_id_number", mask_id_number),
    ("_phone", mask_phone),
    ("_address", mask_name),
)


def short_type(event_type: str) -> str:
    """`gov.case.closed.v1` -> `closed`."""
    name = event_type.removeprefix(TYPE_PREFIX)
    head, _, version = name.rpartition(".")
    return head if head and version.startswith("v") and version[1:].isdigit() else name


def family(topic: str, event_type: str | None) -> str:
    """intake | routing | decisions | approval | delivery | dlq | alert | warning | other."""
    if topic == DLQ_TOPIC:
        return "dlq"
    if event_type in ALERT_TYPES:
        return "alert"
    if event_type in WARNING_TYPES:
        return "warning"
    return FAMILY_OF_TOPIC.get(topic, "other")


def mask_event_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of event data fit for an operator's screen: every personal field masked."""
    masked: dict[str, Any] = _mask_extra(mask_personal_data(data))
    return masked


def _mask_extra(value: Any, key: str = "") -> Any:
    if isinstance(value, Mapping):
        return {k: _mask_extra(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_extra(v, key) for v in value]
    if isinstance(value, str) and key not in PERSONAL_KEYS:
        for suffix, mask in _SUFFIX_MASKS:
            if key.endswith(suffix):
                return mask(value)
    return value


# --------------------------------------------------------------------------- facts of a case


@dataclass
class Facts:
    """What the console knows about one case; empty fields are not known (yet)."""

    offices: set[str] = field(default_factory=set)
    divisions: set[str] = field(default_factory=set)  # applicant's jurisdiction
    departments: set[str] = field(default_factory=set)
    path: str | None = None
    channel: str | None = None

    def merge(self, other: Facts) -> None:
        self.offices |= other.offices
        self.divisions |= other.divisions
        self.departments |= other.departments
        self.path = other.path or self.path
        self.channel = other.channel or self.channel

    def districts(self, catalog: CatalogIndex | None) -> set[str]:
        """Every district the case touches: where it was taken, where the applicant is, and
        where it is decided (a municipal department touches none)."""
        if catalog is None:
            return set()
        found: set[str] = set()
        for office_code in self.offices:
            office = catalog.offices.get(office_code)
            if office is not None:
                found.add(catalog.district_of(office.division) or "")
        for division in self.divisions:
            found.add(catalog.district_of(division) or "")
        for code in self.departments:
            department = catalog.departments.get(code)
            if department is not None:
                found.add(catalog.district_of(department.division) or "")
        found.discard("")
        return found

    def view(self, catalog: CatalogIndex | None) -> dict[str, Any]:
        return {
            "offices": sorted(self.offices),
            "departments": sorted(self.departments),
            "districts": sorted(self.districts(catalog)),
            "path": self.path,
        }


def facts_of_event(data: Mapping[str, Any], handledby: str | None = None) -> Facts:
    """What one event's data says about its case (each contract names these fields the same)."""
    facts = Facts()
    application = data.get("application")
    if isinstance(application, Mapping):
        _add(facts.offices, application.get("office_code"))
        if application.get("channel") == "online":
            facts.offices.add("online")
        facts.channel = _str(application.get("channel")) or facts.channel
        applicant = application.get("applicant")
        if isinstance(applicant, Mapping):
            _add(facts.divisions, applicant.get("division_code"))
    route = data.get("route")
    if isinstance(route, Mapping):
        _add(facts.departments, route.get("handled_by"))
        _add(facts.offices, route.get("intake_office"))
        facts.path = _str(route.get("path"))
    _add(facts.departments, data.get("department"))
    _add(facts.departments, handledby)
    _add(facts.offices, data.get("intake_office"))
    _add(facts.offices, data.get("office_code"))
    handover = data.get("handover")
    if isinstance(handover, Mapping):
        _add(facts.offices, handover.get("office_code"))
    return facts


def facts_of_case_view(view: Mapping[str, Any]) -> Facts:
    """What intake's `GET /v1/cases/{id}` (the operator's masked view) says about the case."""
    facts = Facts()
    _add(facts.offices, view.get("office_code"))
    if view.get("channel") == "online":
        facts.offices.add("online")
    facts.channel = _str(view.get("channel"))
    applicant = view.get("applicant")
    if isinstance(applicant, Mapping):
        _add(facts.divisions, applicant.get("division_code"))
    route = view.get("route")
    if isinstance(route, Mapping):
        _add(facts.departments, route.get("handled_by"))
        facts.path = _str(route.get("path"))
    return facts


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _add(into: set[str], value: Any) -> None:
    if isinstance(value, str) and value:
        into.add(value)


class CaseFacts:
    """What the console has learned per case, bounded (least recently seen cases go first)."""

    def __init__(self, max_cases: int = 20_000) -> None:
        self.max_cases = max_cases
        self._cases: OrderedDict[str, Facts] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cases)

    def get(self, case_id: str) -> Facts | None:
        return self._cases.get(case_id)

    def learn(self, case_id: str, facts: Facts) -> Facts:
        known = self._cases.pop(case_id, None) or Facts()
        known.merge(facts)
        self._cases[case_id] = known
        while len(self._cases) > self.max_cases:
            self._cases.popitem(last=False)
        return known


# --------------------------------------------------------------------------- filters


def _values(raw: str | None) -> frozenset[str]:
    """`"a, b"` -> {"a", "b"}: every filter takes one value or a comma-separated list."""
    if not raw:
        return frozenset()
    return frozenset(v.strip() for v in raw.split(",") if v.strip())


@dataclass(frozen=True)
class StreamFilter:
    """The live stream's filters (the same as `tongban tail`'s); empty means any. Each takes
    one value or a comma-separated list (any of them matches; different filters must all
    match). A case may be a glob (`YZ-20261129-*`); a type is its full or short name, or a
    glob of either (`closed`, `sla_*`, `gov.case.*`)."""

    cases: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    departments: frozenset[str] = frozenset()
    offices: frozenset[str] = frozenset()
    districts: frozenset[str] = frozenset()
    paths: frozenset[str] = frozenset()

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
    ) -> StreamFilter:
        return cls(
            cases=_values(case),
            types=_values(type),
            departments=_values(department),
            offices=_values(office),
            districts=_values(district),
            paths=_values(path),
        )

    @property
    def needs_facts(self) -> bool:
        """True when matching needs to know where a case was taken or is handled."""
        return bool(self.departments or self.offices or self.districts or self.paths)

    def missing_facts(self, facts: Facts | None) -> bool:
        """True when matching needs what intake knows of the case: the console has not seen
        an event that carries its application (it came into the stream halfway)."""
        return self.needs_facts and (facts is None or facts.channel is None)

    def matches(
        self,
        *,
        case_id: str | None,
        event_type: str | None,
        facts: Facts | None,
        catalog: CatalogIndex | None,
    ) -> bool:
        if self.cases and not (
            case_id is not None and any(fnmatch.fnmatchcase(case_id, p) for p in self.cases)
        ):
            return False
        if self.types and not (
            event_type is not None
            and any(
                fnmatch.fnmatchcase(event_type, p) or fnmatch.fnmatchcase(short_type(event_type), p)
                for p in self.types
            )
        ):
            return False
        if not self.needs_facts:
            return True
        if facts is None:
            return False
        if self.departments and not (facts.departments & self.departments):
            return False
        if self.offices and not (facts.offices & self.offices):
            return False
        if self.paths and facts.path not in self.paths:
            return False
        return not (self.districts and not (facts.districts(catalog) & self.districts))

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
            )
            if values
        }


# --------------------------------------------------------------------------- the line shown


def summary(event_type: str | None, data: Mapping[str, Any]) -> str:
    """One short phrase for the stream line (masked data only)."""
    parts: list[str] = []
    route = data.get("route")
    if isinstance(route, Mapping):
        parts.append(f"{route.get('path')} -> {route.get('handled_by')} ({route.get('rule')})")
    failure = data.get("failure")
    if isinstance(failure, Mapping):
        parts.append(f"failed: {failure.get('code')}")
    for key in ("decision", "outcome", "rating", "method", "reason"):
        value = data.get(key)
        if isinstance(value, str) and value:
            parts.append(f"{key} {value}")
    if "deadline" in data:
        parts.append(f"deadline {data['deadline'] or 'unknown'}")
    missing = data.get("missing_materials")
    if isinstance(missing, list) and missing:
        parts.append("missing " + ", ".join(str(m) for m in missing))
    application = data.get("application")
    if isinstance(application, Mapping) and not parts:
        parts.append(f"item {application.get('item_code')} via {application.get('channel')}")
    return "; ".join(parts)[:300]


def stream_item(
    *,
    topic: str,
    partition: int,
    offset: int,
    event_id: str | None,
    event_type: str | None,
    time: datetime | None,
    source: str | None,
    case_id: str | None,
    handledby: str | None,
    data: Mapping[str, Any] | None,
    facts: Facts | None,
    catalog: CatalogIndex | None,
    headers: Iterable[tuple[str, str]] = (),
    error: str | None = None,
) -> dict[str, Any]:
    """The JSON one stream line is drawn from; `data` must already be masked."""
    extra = dict(headers)
    return {
        "id": event_id or f"{topic}/{partition}/{offset}",
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "type": event_type,
        "short_type": short_type(event_type) if event_type else "(unreadable)",
        "family": family(topic, event_type),
        "time": time.isoformat() if time else None,
        "source": source,
        "case_id": case_id,
        "handledby": handledby,
        "facts": (facts or Facts()).view(catalog),
        "summary": error or summary(event_type, data or {}),
        "dlq": {k.removeprefix("dlq_"): v for k, v in extra.items() if k.startswith("dlq_")},
        "data": data,
    }
