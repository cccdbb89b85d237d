"""What the operator console shows of one Kafka record: its family (colour) and its line.

Pure logic, no I/O: the live stream (services.console.stream) parses a record, lets
`CaseMemory` learn what the event says about its case, masks the personal data, and asks the
stream's `EventFilter` (services.operators.event_facts, shared with `tongban tail`).

Most case events do not repeat where a case was taken or who handles it (`gov.case.closed.v1`
carries only the case id), so the filters on department, office, district and path look at
what the console has learned about the case from its earlier events, or from intake's view
of the case when the stream started after them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from contracts.events import (
    APPROVAL_TOPIC,
    BUNDLE_TOPIC,
    DECISIONS_TOPIC,
    DELIVERY_TOPIC,
    DLQ_TOPIC,
    INTAKE_TOPIC,
    ROUTING_TOPIC,
    BundleOverdue,
    BundleSlaWarning,
    CaseAdoptionRefused,
    CaseDeadlineUnknown,
    CaseDenied,
    CaseFollowupOpened,
    CaseForwarded,
    CaseHandoverRefused,
    CaseOverdue,
    CaseRouteFailed,
    CaseSlaWarning,
)
from services.console.links import is_partner_xregion
from services.operators.event_facts import Facts, short_type
from services.policy.catalog_index import CatalogIndex

FAMILY_OF_TOPIC = {
    INTAKE_TOPIC: "intake",
    ROUTING_TOPIC: "routing",
    DECISIONS_TOPIC: "decisions",
    APPROVAL_TOPIC: "approval",
    DELIVERY_TOPIC: "delivery",
    BUNDLE_TOPIC: "bundle",
    DLQ_TOPIC: "dlq",
}
# Events an operator must not miss: coloured as alerts whatever topic they come from.
ALERT_TYPES = frozenset(
    {
        CaseRouteFailed.TYPE,
        CaseDenied.TYPE,
        CaseOverdue.TYPE,
        CaseDeadlineUnknown.TYPE,
        CaseHandoverRefused.TYPE,
        BundleOverdue.TYPE,
        CaseAdoptionRefused.TYPE,  # a partner region will not decide a case taken here (§9)
    }
)
WARNING_TYPES = frozenset({CaseSlaWarning.TYPE, CaseFollowupOpened.TYPE, BundleSlaWarning.TYPE})


def family(topic: str, event_type: str | None) -> str:
    """intake | routing | decisions | approval | delivery | bundle | dlq | alert | warning |
    partner (what a partner region sent here, §9) | other."""
    if topic == DLQ_TOPIC:
        return "dlq"
    if event_type in ALERT_TYPES:
        return "alert"
    if event_type in WARNING_TYPES:
        return "warning"
    if is_partner_xregion(topic):
        return "partner"
    return FAMILY_OF_TOPIC.get(topic, "other")


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
    if event_type == CaseForwarded.TYPE:
        parts.append(f"forwarded {data.get('from_city')} -> {data.get('to_city')}")
    if event_type == CaseAdoptionRefused.TYPE:
        parts.append(f"adoption refused by {data.get('from_city')}: {data.get('code')}")
    origin = data.get("origin")
    if isinstance(origin, Mapping):  # adopted from a partner region (§9)
        parts.append(f"adopted from {origin.get('city_code')} ({origin.get('office_code')})")
    application = data.get("application")
    if isinstance(application, Mapping) and not parts:
        parts.append(f"item {application.get('item_code')} via {application.get('channel')}")
    return "; ".join(parts)[:300]


def cross_region(facts: Facts | None, partner_names: Mapping[str, str]) -> dict[str, Any] | None:
    """A case across regions (DESIGN.md §9) as the console marks it: this region's part
    (`origin`: taken here, decided by the partner; `handler`: adopted from the partner) and the
    partner's city code and name (None while its catalog has not arrived); None for any other
    case."""
    if facts is None or facts.xregion_role is None:
        return None
    code = min(facts.partners, default=None)
    return {
        "role": facts.xregion_role,
        "partner": code,
        "partner_name": partner_names.get(code) if code else None,
    }


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
    partner_names: Mapping[str, str] | None = None,
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
        "bundle_id": next(iter(sorted((facts or Facts()).bundles)), None),
        "handledby": handledby,
        "facts": (facts or Facts()).view(catalog),
        "cross_region": cross_region(facts, partner_names or {}),
        "summary": error or summary(event_type, data or {}),
        "dlq": {k.removeprefix("dlq_"): v for k, v in extra.items() if k.startswith("dlq_")},
        "data": data,
    }
