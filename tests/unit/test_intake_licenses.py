"""intake's licence library rules (services/intake/domain/licenses.py), pure: reuse of held
e-licences, refusal of named ones that cannot be used, and the timeline's line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from contracts.common import Application, Material
from contracts.events import CaseNotified, CaseSubmitted, CaseWithdrawn
from contracts.rest import LicensedMaterial
from services.common.web import problem_of
from services.intake.domain.licenses import (
    LibraryLicense,
    LicenseProblem,
    holder_key,
    reuse_licenses,
    reuse_note,
)
from services.intake.domain.validation import (
    submission_refusal,
    validate_submission,
    with_refusals,
)
from services.policy.catalog_index import CatalogIndex
from tests.unit.catalog_data import TODAY, application, base_catalog, index, resident_id

pytestmark = pytest.mark.unit

BIZ = "T-BIZ-LICENCE"
HOLDER = resident_id()
OTHER = resident_id("11010519800101001")
ISSUED = datetime(2026, 6, 1, 9, tzinfo=UTC)


def _index() -> CatalogIndex:
    raw = base_catalog()
    for item in raw["items"]:
        if item["code"] == "DEL-S":  # material ID takes the licence DEL-D issues
            item["materials"] = [
                {"code": "ID", "name": "身份证", "required": True, "license_type": BIZ},
                {"code": "FORM", "name": "申请表", "required": True},
                {"code": "OPT", "name": "可选", "required": False, "license_type": BIZ},
            ]
        if item["code"] == "DEL-D":
            item["result"] = {"kind": "licence", "e_license": True, "license_type": BIZ}
    return index(raw)


INDEX = _index()
ITEM = INDEX.items["DEL-S"]


def lic(
    license_id: str,
    *,
    holder: str | None = HOLDER,
    license_type: str | None = BIZ,
    revoked: bool = False,
    issued_at: datetime | None = ISSUED,
) -> LibraryLicense:
    return LibraryLicense(license_id, license_type, holder, issued_at, revoked)


def app(*materials: Material, id_number: str = HOLDER) -> Application:
    base = application("DEL-S", office="T11-SC", id_number=id_number)
    return base.model_copy(update={"materials": list(materials)})


def test_a_held_licence_satisfies_every_material_of_its_type_without_asking() -> None:
    reuse = reuse_licenses(ITEM, app(Material(code="FORM")), [lic("EL-1")])
    assert reuse.refusals == ()
    assert reuse.reused == (
        LicensedMaterial(material="ID", license_id="EL-1"),
        LicensedMaterial(material="OPT", license_id="EL-1"),
    )
    by_code = {m.code: m for m in reuse.application.materials}
    assert by_code["ID"].e_license_id == "EL-1" and by_code["OPT"].e_license_id == "EL-1"
    result = validate_submission(INDEX, reuse.application, today=TODAY)
    assert result.ok and result.missing_materials == ()


def test_without_a_licence_the_material_is_missing_as_before() -> None:
    submitted = app(Material(code="FORM"))
    for library in ([], [lic("EL-9", holder=OTHER)], [lic("EL-8", revoked=True)]):
        reuse = reuse_licenses(ITEM, submitted, library)
        assert reuse.reused == () and reuse.refusals == ()
        assert reuse.application == submitted
        assert validate_submission(INDEX, reuse.application, today=TODAY).missing_materials == (
            "ID",
        )


def test_the_newest_valid_licence_is_attached_and_a_given_entry_keeps_its_document() -> None:
    library = [
        lic("EL-OLD", issued_at=ISSUED - timedelta(days=30)),
        lic("EL-NEW"),
        lic("EL-NEWEST-REVOKED", issued_at=ISSUED + timedelta(days=1), revoked=True),
    ]
    given = Material(code="ID", sha256="a" * 64, deferred=True, commitment=True)
    reuse = reuse_licenses(ITEM, app(given, Material(code="FORM")), library)
    (entry,) = [m for m in reuse.application.materials if m.code == "ID"]
    assert entry.e_license_id == "EL-NEW" and entry.sha256 == "a" * 64
    assert not entry.deferred and not entry.commitment  # the licence satisfies it


def test_an_id_number_typed_in_lower_case_is_the_same_holder() -> None:
    lower = HOLDER.lower() if HOLDER.endswith("X") else HOLDER
    reuse = reuse_licenses(ITEM, app(id_number=f" {lower} "), [lic("EL-1")])
    assert [r.license_id for r in reuse.reused] == ["EL-1", "EL-1"]
    assert holder_key(" 11010519491231002x ") == "11010519491231002X"


def test_a_named_valid_licence_is_kept_and_listed() -> None:
    named = Material(code="ID", e_license_id="EL-2")
    reuse = reuse_licenses(ITEM, app(named), [lic("EL-1"), lic("EL-2")])
    assert reuse.refusals == ()
    assert LicensedMaterial(material="ID", license_id="EL-2") in reuse.reused
    (entry,) = [m for m in reuse.application.materials if m.code == "ID"]
    assert entry.e_license_id == "EL-2"  # never replaced by the newest


@pytest.mark.parametrize(
    ("material", "library", "problem"),
    [
        ("ID", [], LicenseProblem.unknown),
        ("ID", [lic("EL-X", holder=OTHER)], LicenseProblem.other_holder),
        # another holder's revoked licence is not described further
        ("ID", [lic("EL-X", holder=OTHER, revoked=True)], LicenseProblem.other_holder),
        ("ID", [lic("EL-X", revoked=True)], LicenseProblem.revoked),
        # only its revocation has arrived so far: revoked
        ("ID", [lic("EL-X", holder=None, license_type=None, revoked=True)], LicenseProblem.revoked),
        ("ID", [lic("EL-X", license_type="T-OTHER")], LicenseProblem.wrong_type),
        ("FORM", [lic("EL-X")], LicenseProblem.wrong_type),  # FORM takes no licence
    ],
)
def test_a_named_licence_that_cannot_be_used_is_invalid_license_on_its_field(
    material: str, library: list[LibraryLicense], problem: LicenseProblem
) -> None:
    submitted = app(Material(code="ID"), Material(code="FORM"))
    materials = [
        m.model_copy(update={"e_license_id": "EL-X"}) if m.code == material else m
        for m in submitted.materials
    ]
    reuse = reuse_licenses(ITEM, submitted.model_copy(update={"materials": materials}), library)
    (refusal,) = reuse.refusals
    index = [m.code for m in materials].index(material)
    assert refusal.code == "invalid_license" and refusal.extra["reason"] == problem.value
    result = with_refusals(validate_submission(INDEX, reuse.application, today=TODAY), [refusal])
    body = problem_of(submission_refusal(result)).body()
    assert body["status"] == 422 and body["code"] == "invalid_license"
    assert f"({problem.value})" in body["detail"]
    assert [e["field"] for e in body["errors"]] == [f"materials.{index}.e_license_id"]


def test_licence_refusals_join_the_others_in_order() -> None:
    bad = app(Material(code="ID", e_license_id="EL-NONE"), id_number="123")
    reuse = reuse_licenses(ITEM, bad, [])
    result = with_refusals(
        validate_submission(INDEX, reuse.application, today=TODAY), reuse.refusals
    )
    assert [r.code for r in result.refusals] == ["invalid_id_number", "invalid_license"]


def test_an_unknown_item_or_material_is_left_to_validation() -> None:
    odd = app(Material(code="NOPE", e_license_id="EL-1"))
    assert reuse_licenses(None, odd, [lic("EL-1")]).application == odd
    reuse = reuse_licenses(ITEM, odd, [lic("EL-1")])
    assert reuse.refusals == ()
    assert validate_submission(INDEX, reuse.application, today=TODAY).refusal is not None


def test_the_timeline_says_which_licence_satisfied_which_material() -> None:
    data = {"application": {"materials": [{"code": "ID", "e_license_id": "EL-1"}, {"code": "F"}]}}
    assert reuse_note(CaseSubmitted.TYPE, data) == "e-licences reused (免提交): ID ← EL-1"
    assert reuse_note(CaseNotified.TYPE, data) is not None
    assert reuse_note(CaseSubmitted.TYPE, {"application": {"materials": [{"code": "F"}]}}) is None
    assert reuse_note(CaseWithdrawn.TYPE, data) is None
    assert reuse_note(CaseSubmitted.TYPE, None) is None
