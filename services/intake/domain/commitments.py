"""Commitments at the counter (告知承诺, DESIGN.md §7), pure: which `commitment: true`
materials intake refuses, and which revocations bar an applicant from committing again.

A material the catalog marks `commitment: true` may be satisfied by the applicant's written
commitment instead of proof: it counts as present, so the case goes ahead without it. Approval
verifies it after the decision; a breach revokes the decision (`gov.case.revoked.v1`, reason
`commitment_breached`) and bars the applicant (as a holder: ID number trimmed and upper-cased,
as the licence library keys them) from commitments. So `commitment: true` is 422
`commitment_not_allowed` on `materials.N.commitment` on a material that does not allow it, or
from a barred applicant; the detail says which.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from contracts.catalog import Item
from contracts.common import Material
from contracts.events import CaseRevoked
from services.common.refusals import FieldError, Refusal

COMMITMENT_NOT_ALLOWED = "commitment_not_allowed"
BREACHED = "commitment_breached"  # the revocation reason that bars the applicant


def commitment_problem(item: Item, code: str, *, barred: bool) -> str | None:
    """Why material `code` of `item` may not be satisfied by a commitment, or None when it
    may. An unknown material is left alone: validation refuses it as `unknown_material`."""
    spec = next((m for m in item.materials if m.code == code), None)
    if spec is None:
        return None
    if barred:
        return (
            "the applicant breached an earlier commitment and may no longer commit instead of "
            f"proving: bring material {code!r}"
        )
    if spec.commitment:
        return None
    allowed = ", ".join(m.code for m in item.materials if m.commitment) or "none"
    return (
        f"material {code!r} of item {item.code} takes no commitment: bring it "
        f"(materials that allow one: {allowed})"
    )


def commitment_refusals(
    item: Item | None, materials: Sequence[Material], *, barred: bool
) -> tuple[Refusal, ...]:
    """One 422 `commitment_not_allowed` per committed material that may not be (in order)."""
    if item is None:
        return ()
    refusals = []
    for i, material in enumerate(materials):
        if not material.commitment:
            continue
        why = commitment_problem(item, material.code, barred=barred)
        if why is None:
            continue
        field = f"materials.{i}.commitment"
        refusals.append(
            Refusal(
                422,
                COMMITMENT_NOT_ALLOWED,
                "A commitment cannot replace this material",
                f"{field}: {why}.",
                (FieldError(field, why, COMMITMENT_NOT_ALLOWED),),
            )
        )
    return tuple(refusals)


def commits(materials: Sequence[Material]) -> bool:
    return any(m.commitment for m in materials)


def bars_applicant(event_type: str, data: dict[str, Any]) -> bool:
    """A decision revoked for a breached commitment: its applicant is barred from commitments."""
    return event_type == CaseRevoked.TYPE and data.get("reason") == BREACHED
