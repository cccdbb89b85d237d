"""Deferred materials at the counter (容缺受理, DESIGN.md §7), pure: which a case still owes,
when intake takes them, and how the case view lists them.

A material the catalog marks `deferrable` may be submitted as `deferred: true`: it counts as
present, so the case is submitted and routed at once. Approval sets the due day at acceptance
(`gov.case.accepted.v1` `deferred_due`). After acceptance the applicant brings the material with
`POST /v1/cases/{case_id}/materials`; intake passes it on as `gov.case.supplemented.v1` (the
materials event approval already follows), and approval publishes a held approval when the
last one arrives. Intake takes late materials only once the case is accepted, so approval
always knows the case they belong to; during a supplement round they come with the requested
materials (one visit, and one meaning for the event: it answers the request).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any

from contracts.common import CaseStatus
from contracts.rest import DeferredMaterial

# The statuses in which a case takes its deferred materials alone (after acceptance).
TAKES_LATE_MATERIALS = frozenset({CaseStatus.accepted, CaseStatus.approval_held})


def deferred_rows(codes: Iterable[str]) -> list[dict[str, Any]]:
    """The stored form of the deferred materials of a new case: none received yet."""
    return [{"code": code, "received": False} for code in dict.fromkeys(codes)]


def outstanding(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The deferred material codes not yet brought, in submission order."""
    return [r["code"] for r in rows if not r.get("received")]


def mark_received(rows: Sequence[dict[str, Any]], codes: Iterable[str]) -> list[dict[str, Any]]:
    """`rows` with the deferred materials among `codes` received."""
    given = set(codes)
    return [{**r, "received": bool(r.get("received")) or r["code"] in given} for r in rows]


def takes_late_materials(status: CaseStatus, codes: Sequence[str], owed: Sequence[str]) -> bool:
    """Whether a materials request of only these codes is the late arrival of deferred ones: an
    accepted case (or a held approval) still owing every one of them."""
    return status in TAKES_LATE_MATERIALS and bool(codes) and set(codes) <= set(owed)


def deferred_view(rows: Sequence[dict[str, Any]], due: date | None) -> list[DeferredMaterial]:
    return [
        DeferredMaterial(code=r["code"], due=due, received=bool(r.get("received"))) for r in rows
    ]
