"""The licence library at intake (电子证照免提交, DESIGN.md §7), pure: which held e-licences a
submission reuses, which `e_license_id`s it names in vain, and what the timeline says of it.

A government-issued certificate is never asked for again: for each material of the item with a
`license_type`, when the applicant holds a valid (not revoked) licence of that type, the
material is satisfied by it without asking (the newest such licence is attached as the
material's `e_license_id`, so routing, approval and the timeline see where it came from). A
material the submission names with an `e_license_id` of its own is checked instead, never
replaced: the licence must be in the library, be the applicant's, not be revoked and be of the
type the material asks for; otherwise 422 `invalid_license` on `materials.N.e_license_id`,
with the reason in the detail. An applicant who holds nothing submits as before.

The library is intake's copy of `license.v1` (eventually consistent: a licence issued a moment
ago may not be here yet, and is then `unknown`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from contracts.catalog import Item, MaterialSpec
from contracts.common import Application, Material
from contracts.events import CaseNotified, CaseSubmitted
from contracts.rest import LicensedMaterial
from services.common.refusals import FieldError, Refusal

INVALID_LICENSE = "invalid_license"


def holder_key(id_number: str) -> str:
    """The holder as the library knows them (delivery writes it so): the ID number trimmed and
    upper-cased, so one person is one holder however the number was typed."""
    return id_number.strip().upper()


@dataclass(frozen=True, slots=True)
class LibraryLicense:
    """One licence of intake's copy of the library. `license_type` and `holder_id_number` are
    None while only its revocation has arrived (the issue is still on its way)."""

    license_id: str
    license_type: str | None
    holder_id_number: str | None
    issued_at: datetime | None
    revoked: bool


class LicenseProblem(StrEnum):
    """Why a named `e_license_id` cannot satisfy its material (the order they are checked in:
    a licence of another holder is never described further)."""

    unknown = "unknown"
    other_holder = "other_holder"
    revoked = "revoked"
    wrong_type = "wrong_type"


@dataclass(frozen=True, slots=True)
class LicenseReuse:
    """The application with every reused licence attached, the materials licences satisfy
    (attached or named), and the refusals of named licences that cannot be used."""

    application: Application
    reused: tuple[LicensedMaterial, ...] = ()
    refusals: tuple[Refusal, ...] = ()


def license_problem(
    license: LibraryLicense | None, spec: MaterialSpec, holder: str
) -> tuple[LicenseProblem, str] | None:
    """Why `license` cannot satisfy `spec` for `holder` (with a sentence), or None when it can."""
    if license is None:
        return LicenseProblem.unknown, "no such e-licence in the licence library"
    if license.holder_id_number is not None and license.holder_id_number != holder:
        return LicenseProblem.other_holder, "the e-licence belongs to another holder"
    if license.revoked:
        return LicenseProblem.revoked, "the e-licence was revoked"
    if spec.license_type is None:
        return LicenseProblem.wrong_type, f"material {spec.code} takes no e-licence"
    if license.license_type != spec.license_type:
        return (
            LicenseProblem.wrong_type,
            f"the e-licence is of type {license.license_type}; material {spec.code} takes "
            f"{spec.license_type}",
        )
    return None


def _refusal(index: int, license_id: str, problem: LicenseProblem, message: str) -> Refusal:
    field = f"materials.{index}.e_license_id"
    return Refusal(
        422,
        INVALID_LICENSE,
        "The e-licence cannot be used",
        f"{field}: {license_id}: {message} ({problem.value}).",
        (FieldError(field, message, INVALID_LICENSE),),
        {"reason": problem.value},
    )


def newest_valid(
    licenses: Iterable[LibraryLicense], *, holder: str, license_type: str
) -> str | None:
    """The id of the holder's newest valid licence of the type, or None."""
    held = [
        lic
        for lic in licenses
        if lic.holder_id_number == holder
        and lic.license_type == license_type
        and not lic.revoked
        and lic.issued_at is not None
    ]
    if not held:
        return None
    return max(held, key=lambda lic: (lic.issued_at, lic.license_id)).license_id


def reuse_licenses(
    item: Item | None, application: Application, licenses: Iterable[LibraryLicense]
) -> LicenseReuse:
    """Attach held licences and check named ones (see the module docstring). `licenses` holds
    at least the applicant's licences and those the submission names. An unknown item or
    material is left alone: `validation` refuses it."""
    if item is None:
        return LicenseReuse(application)
    library = list(licenses)
    holder = holder_key(application.applicant.id_number)
    materials = list(application.materials)
    reused, refusals = check_named_licenses(item, holder, materials, library)
    named = {m.code for m in materials if m.e_license_id is not None}
    for spec in item.materials:
        if spec.license_type is None or spec.code in named:
            continue
        license_id = newest_valid(library, holder=holder, license_type=spec.license_type)
        if license_id is None:
            continue
        materials = _attached(materials, spec.code, license_id)
        reused.append(LicensedMaterial(material=spec.code, license_id=license_id))
    return LicenseReuse(
        application.model_copy(update={"materials": materials}), tuple(reused), refusals
    )


def check_named_licenses(
    item: Item, holder: str, materials: Sequence[Material], licenses: Iterable[LibraryLicense]
) -> tuple[list[LicensedMaterial], tuple[Refusal, ...]]:
    """The materials (of a submission or a supplement) that name a usable licence, and one
    refusal per named licence that cannot be used, on `materials.N.e_license_id`. A material
    code the item does not have is left alone (refused as unknown_material elsewhere)."""
    by_id = {lic.license_id: lic for lic in licenses}
    specs = {spec.code: spec for spec in item.materials}
    usable: list[LicensedMaterial] = []
    refusals: list[Refusal] = []
    for index, material in enumerate(materials):
        spec = specs.get(material.code)
        if material.e_license_id is None or spec is None:
            continue
        found = license_problem(by_id.get(material.e_license_id), spec, holder)
        if found is None:
            usable.append(LicensedMaterial(material=spec.code, license_id=material.e_license_id))
        else:
            refusals.append(_refusal(index, material.e_license_id, *found))
    return usable, tuple(refusals)


def _attached(materials: list[Material], code: str, license_id: str) -> list[Material]:
    """The material `code` satisfied by the licence: the entry given is kept (its document hash
    too) with the licence added, and nothing left to commit to or bring later; a material not
    given is added after the others."""
    # The licence satisfies it: no commitment and no deferral is owed for it any more.
    change = {"e_license_id": license_id, "commitment": False, "deferred": False}
    if any(m.code == code for m in materials):
        return [m.model_copy(update=change) if m.code == code else m for m in materials]
    return [*materials, Material(code=code, e_license_id=license_id)]


def reuse_note(event_type: str, data: Mapping[str, Any] | None) -> str | None:
    """The timeline's line for a submission that carries e-licences: which material each
    licence satisfies (read from the application the event carries, so it is what routing and
    approval received)."""
    if event_type not in (CaseNotified.TYPE, CaseSubmitted.TYPE) or not data:
        return None
    materials = (data.get("application") or {}).get("materials") or []
    pairs = [
        f"{m.get('code')} ← {m['e_license_id']}"
        for m in materials
        if isinstance(m, dict) and m.get("e_license_id")
    ]
    return "e-licences reused (免提交): " + ", ".join(pairs) if pairs else None
