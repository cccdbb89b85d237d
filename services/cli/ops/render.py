"""How operators see an event: one colored line, or one JSON line. Personal data is always
masked (there is no unmasked mode): the event data goes through `mask_event_data`, every
other text (headers, keys, reasons, unreadable values) through `mask_text`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rich.text import Text

from services.cli.ops.events import EventView
from services.cli.ops.filters import facts_of_view
from services.common.logs import mask_text
from services.operators.event_facts import mask_event_data, short_type, status_after


def masked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: mask_text(value) for name, value in headers.items()}


_STYLE_BY_SHORT = {
    "route_failed": "bold red",
    "denied": "red",
    "overdue": "bold red",
    "handover_refused": "bold red",
    "deadline_unknown": "red",
    "sla_warning": "yellow",
    "supplement_requested": "yellow",
    "notified": "yellow",
    "followup_opened": "yellow",
    "approved": "green",
    "result_issued": "green",
    "delivered": "green",
    "closed": "bold green",
    "routed": "cyan",
    "accepted": "cyan",
    "submitted": "blue",
}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary(view: EventView) -> list[tuple[str, str]]:
    """(label, value) pairs that tell what happened, masked."""
    pairs: list[tuple[str, str]] = []
    headers = view.headers
    if "dlq_reason" in headers:
        origin = headers.get("dlq_topic", "?")
        if "dlq_partition" in headers:
            origin += f"/{headers['dlq_partition']}@{headers.get('dlq_offset', '?')}"
        pairs.append(("from", origin))
        pairs.append(("by", headers.get("dlq_source", "?")))
        pairs.append(("reason", _clip(mask_text(headers["dlq_reason"]), 160)))
    if view.error is not None:
        pairs.append(("unreadable", _clip(mask_text(view.error), 160)))
    status = status_after(view.type)
    if status:
        pairs.append(("status", status))
    facts = facts_of_view(view)
    data = view.data or {}
    if facts.paths:
        pairs.append(("path", ",".join(sorted(facts.paths))))
    if facts.departments:
        pairs.append(("dept", ",".join(sorted(facts.departments))))
    if facts.offices:
        pairs.append(("office", ",".join(sorted(facts.offices))))
    if facts.bundles:
        pairs.append(("bundle", ",".join(sorted(facts.bundles))))
    for key in ("decision", "rating", "rule"):
        if isinstance(data.get(key), str):
            pairs.append((key, data[key]))
    failure = data.get("failure")
    if isinstance(failure, Mapping) and isinstance(failure.get("code"), str):
        pairs.append(("failure", failure["code"]))
    if isinstance(data.get("deadline"), str):
        pairs.append(("deadline", data["deadline"]))
    return pairs


def event_line(view: EventView) -> Text:
    """`2026-11-29 20:01:02.123  routed  YZ-20261129-1A2B3C4D5E  status=routed path=... `"""
    short = short_type(view.type) if view.type else "(unreadable)"
    is_dead = "dlq_reason" in view.headers
    style = "bold magenta" if is_dead else _STYLE_BY_SHORT.get(short, "white")
    if view.error is not None and not is_dead:
        style = "bold red"
    line = Text(no_wrap=False)
    line.append(view.time.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], style="dim")
    line.append("  ")
    line.append(f"{('dead:' if is_dead else '') + short:<22}", style=style)
    line.append(" ")
    line.append(mask_text(view.case_id or "-"), style="bold")
    for label, value in summary(view):
        line.append("  ")
        line.append(f"{label}=", style="dim")
        line.append(value)
    line.append(f"  [{view.coordinates}]", style="dim")
    return line


def event_json(view: EventView) -> dict[str, Any]:
    """One JSON line: coordinates, masked headers and masked data."""
    out: dict[str, Any] = {
        "time": view.time.isoformat(timespec="milliseconds"),
        "topic": view.topic,
        "partition": view.partition,
        "offset": view.offset,
        "key": mask_text(view.key) if view.key is not None else None,
        "case_id": mask_text(view.case_id) if view.case_id else None,
        "type": view.type,
        "headers": masked_headers(view.headers),
        "data": mask_event_data(view.data) if view.data is not None else None,
    }
    if view.error is not None:
        out["error"] = mask_text(view.error)
    if view.value_text is not None:
        out["value_text"] = mask_text(view.value_text)
    return out


def json_line(view: EventView) -> str:
    return json.dumps(event_json(view), ensure_ascii=False, separators=(",", ":"))
