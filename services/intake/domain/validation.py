"""What intake refuses at once, before a case exists (DESIGN.md §3, §4): pure checks of a
submission against the catalog version intake holds.

Every check runs, so the applicant hears about every fault at once (the spirit of 一次性告知);
the first refusal by the order below gives the problem's `code`, and `errors` lists every field:

  invalid_id_number   resident ID (GB 11643) for an individual, USCC (GB 32100) for an enterprise
  unknown_item        the item code is not in the catalog
  item_not_effective  the item is not in force today
  not_cross_region    an applicant of a partner region, for a partner's item that is not
                      `scope: cross_region` (DESIGN.md §9: `services.policy.partner_rules`)
  unknown_office      a counter submission without office_code, or an office not in the catalog
  office_not_allowed  the channel/office may not take the item (with where to go instead)
  unknown_material    a material code the item does not have (the valid codes are listed)
  deferral_not_allowed  `deferred: true` on a material the catalog does not mark `deferrable`
  commitment_not_allowed  `commitment: true` on a material that takes none, or from an
                      applicant barred after a breach (`domain.commitments`, merged in by the
                      handler, which knows the bar)
  invalid_license     an e_license_id that is unknown, another holder's, revoked or of the
                      wrong type (`domain.licenses`, checked against intake's licence library)
  invalid_delivery    postal without an address; counter pickup on the online channel

An applicant whose division lies in a partner region (`partner`) has the item code read in that
partner's catalog, the office judged by `partner_rules.partner_office_allowed` and the
materials against the partner's item; every other check is the same.

Not refused here: an applicant division in no region known (routing fails it as
out_of_jurisdiction), a deferred material (it counts as present: the case goes ahead and the
applicant brings it after acceptance, 容缺受理, DESIGN.md §7), missing required materials
(they are returned as `missing_materials` for the one-time notification), and an applicant
category differing from the item's (the catalog item's category sets the default intake
levels; the applicant's sets the ID format).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

from stdnum.cn import ric, uscc
from stdnum.exceptions import ValidationError as StdnumError

from contracts.catalog import Item
from contracts.common import Application, Category, Channel, Delivery, DeliveryMethod, Material
from services.common.refusals import FieldError, Refusal
from services.policy.catalog_index import CatalogIndex
from services.policy.intake_rules import (
    OfficeDecision,
    item_in_force,
    missing_materials,
    office_allowed,
    unknown_material,
)
from services.policy.partner_rules import partner_item_problems, partner_office_allowed

TITLES = {
    "invalid_id_number": "The ID number is not valid",
    "unknown_item": "Unknown item",
    "item_not_effective": "The item is not in force",
    "not_cross_region": "The partner region's item is not offered across regions",
    "unknown_office": "Unknown intake office",
    "office_not_allowed": "This channel or office may not take the item",
    "unknown_material": "Unknown material",
    "deferral_not_allowed": "This material cannot be deferred",
    "commitment_not_allowed": "A commitment cannot replace this material",
    "invalid_license": "The e-licence cannot be used",
    "invalid_delivery": "The delivery method is not possible",
}
ORDER = tuple(TITLES)  # precedence of the problem's code when several refusals apply

_DIGITS = re.compile(r"[0-9]+")
_USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # GB 32100: no I, O, Z, S, V


@dataclass(frozen=True, slots=True)
class ValidationResult:
    """`refusals` empty: the submission is taken; `missing_materials` (required material codes
    not provided, in catalog order) go into the one-time notification."""

    refusals: tuple[Refusal, ...] = ()
    missing_materials: tuple[str, ...] = ()
    item: Item | None = None
    id_number: str | None = field(default=None)  # normalised (upper case, trimmed) when valid

    @property
    def ok(self) -> bool:
        return not self.refusals

    @property
    def refusal(self) -> Refusal | None:
        """The refusal that names the problem (first by ORDER)."""
        return self.refusals[0] if self.refusals else None


def submission_refusal(result: ValidationResult) -> Refusal:
    """The one refusal a refused submission is answered with: status 422, the first refusal's
    code, title and detail (the others' details appended), every field error, and `guidance`
    (where to go instead) when an office was refused."""
    first = result.refusal
    if first is None:
        raise ValueError("an accepted submission has no refusal")
    guidance = next((r.extra["guidance"] for r in result.refusals if "guidance" in r.extra), None)
    others = [r.detail for r in result.refusals[1:]]
    return Refusal(
        first.status,
        first.code,
        first.title,
        first.detail + ("" if not others else " Also: " + " ".join(others)),
        tuple(e for r in result.refusals for e in r.errors),
        {"guidance": guidance} if guidance is not None else {},
    )


def field_refusal(
    code: str, field_name: str, message: str, guidance: Mapping[str, Any] | None = None
) -> Refusal:
    """A 422 refusal of one field of a submission (or a bundle), titled by its code."""
    return Refusal(
        422,
        code,
        TITLES.get(code, code),
        message,
        (FieldError(field_name, message, code),),
        {"guidance": dict(guidance)} if guidance is not None else {},
    )


def office_refusals(decision: OfficeDecision) -> list[Refusal]:
    """`unknown_office` or `office_not_allowed` (with where to go instead) when the channel or
    office may not take the application (or the bundle); none when it may."""
    if decision.allowed:
        return []
    guidance = decision.guidance.as_dict() if decision.guidance is not None else None
    return [
        field_refusal(
            decision.code or "office_not_allowed",
            decision.field or "office_code",
            decision.message,
            guidance,
        )
    ]


def delivery_refusals(delivery: Delivery, channel: Channel) -> list[Refusal]:
    """`invalid_delivery`: postal without an address; counter pickup on the online channel."""
    out = []
    if delivery.method is DeliveryMethod.postal and not (delivery.address or "").strip():
        out.append(
            field_refusal(
                "invalid_delivery", "delivery.address", "postal delivery needs an address"
            )
        )
    if delivery.method is DeliveryMethod.counter_pickup and channel is Channel.online:
        out.append(
            field_refusal(
                "invalid_delivery",
                "delivery.method",
                "counter pickup needs a counter: an online application chooses postal or "
                "electronic",
            )
        )
    return out


# --------------------------------------------------------------------------- ID numbers


def resident_id_problem(value: str, *, today: date) -> str | None:
    """Why `value` is not a resident ID number (GB 11643), or None when it is one. The region
    code is not checked against a list: divisions change, and the checksum catches typos."""
    number = value.strip().upper()
    what = "a resident ID number (GB 11643)"
    if len(number) != 18:
        return f"{what} has 18 characters; this one has {len(number)}"
    if not _DIGITS.fullmatch(number[:17]):
        return f"{what} has digits in its first 17 characters"
    if not (number[17].isdigit() or number[17] == "X"):
        return f"{what} ends in a digit or X, not {number[17]!r}"
    if ric.calc_check_digit(number) != number[17]:
        return f"the check character of {what} does not match: a character is mistyped"
    try:
        born = ric.get_birth_date(number)
    except StdnumError:
        return f"characters 7-14 of {what} ({number[6:14]}) are not a valid birth date"
    if born > today:
        return f"the birth date in {what} ({born}) is in the future"
    return None


def credit_code_problem(value: str) -> str | None:
    """Why `value` is not a unified social credit code (GB 32100), or None when it is one."""
    number = value.strip().upper()
    what = "a unified social credit code (GB 32100)"
    if len(number) != 18:
        return f"{what} has 18 characters; this one has {len(number)}"
    if any(c not in _USCC_ALPHABET for c in number[:2]) or not _DIGITS.fullmatch(number[2:8]):
        return (
            f"{what} starts with the registering authority and entity type, then a 6-digit "
            f"region code; {number[:8]!r} is not that"
        )
    if bad := sorted({c for c in number[8:] if c not in _USCC_ALPHABET}):
        return (
            f"characters 9-18 of {what} are digits or capital letters except I, O, Z, S, V; "
            f"found {', '.join(bad)}"
        )
    if uscc.calc_check_digit(number) != number[17]:
        return f"the check character of {what} does not match: a character is mistyped"
    return None


def id_number_problem(category: Category, value: str, *, today: date) -> str | None:
    if category is Category.individual:
        return resident_id_problem(value, today=today)
    return credit_code_problem(value)


# --------------------------------------------------------------------------- the submission


def validate_submission(
    index: CatalogIndex,
    application: Application,
    *,
    today: date,
    partner: CatalogIndex | None = None,
) -> ValidationResult:
    """Check a submission against the catalog (pure). `today` is the city's local date;
    `partner`: the partner region's catalog the applicant's division lies in (§9)."""
    refusals: list[Refusal] = []

    def refuse(
        code: str, field_name: str, message: str, guidance: Mapping[str, Any] | None = None
    ) -> None:
        refusals.append(field_refusal(code, field_name, message, guidance))

    applicant = application.applicant
    id_problem = id_number_problem(applicant.category, applicant.id_number, today=today)
    if id_problem is not None:
        refuse("invalid_id_number", "applicant.id_number", id_problem)

    if partner is None:
        item, decision = _own_item(index, application, today, refuse)
    else:
        item, problems = partner_item_problems(partner, application.item_code, today)
        for problem in problems:
            refuse(problem.code, "item_code", problem.message)
        decision = partner_office_allowed(
            index, partner, channel=application.channel, office_code=application.office_code
        )
    missing: tuple[str, ...] = ()
    if item is not None and decision is not None:
        refusals.extend(office_refusals(decision))
        for i, material in enumerate(application.materials):
            if (unknown := unknown_material(item, material.code)) is not None:
                refuse("unknown_material", f"materials[{i}].code", unknown)
            elif material.deferred and (why := deferral_problem(item, material.code)):
                refuse("deferral_not_allowed", f"materials[{i}].deferred", why)
        missing = missing_materials(item, (m.code for m in application.materials))

    refusals.extend(delivery_refusals(application.delivery, application.channel))

    refusals.sort(key=lambda r: ORDER.index(r.code) if r.code in ORDER else len(ORDER))
    return ValidationResult(
        refusals=tuple(refusals),
        missing_materials=missing,
        item=item,
        id_number=applicant.id_number.strip().upper() if id_problem is None else None,
    )


def _own_item(
    index: CatalogIndex,
    application: Application,
    today: date,
    refuse: Callable[[str, str, str], None],
) -> tuple[Item | None, OfficeDecision | None]:
    """The item read in this region's catalog, whether it is in force, and the office's
    decision on it (none when the item is unknown)."""
    item = index.items.get(application.item_code)
    if item is None:
        refuse(
            "unknown_item",
            "item_code",
            f"item {application.item_code!r} is not in the catalog; GET /v1/items lists the items",
        )
        return None, None
    if not item_in_force(item, today):
        window = f"{item.effective_from or '…'} ~ {item.effective_to or '…'}"
        refuse(
            "item_not_effective",
            "item_code",
            f"item {item.code} is not in force on {today} (effective {window})",
        )
    decision = office_allowed(
        index,
        item,
        channel=application.channel,
        office_code=application.office_code,
        applicant_division=application.applicant.division_code,
    )
    return item, decision


def deferral_problem(item: Item, code: str) -> str | None:
    """Why material `code` of `item` may not be deferred (容缺受理), or None when it may: only a
    material the catalog marks `deferrable` (a non-key one) is brought after acceptance."""
    spec = next((m for m in item.materials if m.code == code), None)
    if spec is None or spec.deferrable:
        return None
    deferrable = ", ".join(m.code for m in item.materials if m.deferrable) or "none"
    return (
        f"material {code!r} of item {item.code} cannot be deferred: bring it now "
        f"(deferrable materials: {deferrable})"
    )


def deferred_codes(materials: Iterable[Material]) -> list[str]:
    """The material codes deferred at submission, in the submission's order."""
    return list(dict.fromkeys(m.code for m in materials if m.deferred))


def with_refusals(result: ValidationResult, more: Iterable[Refusal]) -> ValidationResult:
    """`result` with the refusals of a check outside `validate_submission` (the licence
    library's) merged in, still ordered by ORDER: every fault is listed at once."""
    extra = tuple(more)
    if not extra:
        return result
    merged = sorted(
        result.refusals + extra,
        key=lambda r: ORDER.index(r.code) if r.code in ORDER else len(ORDER),
    )
    return replace(result, refusals=tuple(merged))


def supplement_refusal(item: Item, codes: Iterable[str]) -> Refusal | None:
    """A supplement naming a material code the item does not have: refused whole (nothing of
    it is taken), every unknown code listed; None when every code is the item's."""
    return unknown_codes_refusal({m.code for m in item.materials}, codes)


def unknown_codes_refusal(
    known: Collection[str], codes: Iterable[str], *, among: str = ""
) -> Refusal | None:
    """`unknown_material` for the codes of a supplement not `known` (`among`: whose codes
    they are, for the detail), every one listed; None when every code is known."""
    unknown = [code for code in codes if code not in known]
    if not unknown:
        return None
    return Refusal(
        422,
        "unknown_material",
        "Unknown material code",
        f"{', '.join(unknown)} not among {among}{', '.join(sorted(known))}",
        tuple(FieldError("materials", f"unknown {code}") for code in unknown),
    )
