"""Commitment (告知承诺) at intake (services/intake/domain/commitments.py): `commitment: true`
counts as present on a material that allows it, and is 422 `commitment_not_allowed` on any
other, or from an applicant barred after a breach; which revocations bar."""

from __future__ import annotations

import pytest

from contracts.common import Application, Material
from contracts.events import CaseRevoked, CaseTerminated
from services.intake.domain import commitments
from services.intake.domain.validation import (
    submission_refusal,
    validate_submission,
    with_refusals,
)
from services.policy.catalog_index import CatalogIndex
from tests.unit.catalog_data import TODAY, application, base_catalog, index

pytestmark = pytest.mark.unit


def committing_index() -> CatalogIndex:
    raw = base_catalog()
    item = next(i for i in raw["items"] if i["code"] == "DEL-D")
    item["materials"][1]["commitment"] = True  # B may be a written commitment
    return index(raw)


INDEX = committing_index()
ITEM = INDEX.items["DEL-D"]


def submission(*materials: Material) -> Application:
    app = application("DEL-D", office="T1-DC")
    return app.model_copy(update={"materials": list(materials)})


def checked(app: Application, *, barred: bool = False) -> tuple[list[str], object]:
    refusals = commitments.commitment_refusals(ITEM, app.materials, barred=barred)
    result = with_refusals(validate_submission(INDEX, app, today=TODAY), refusals)
    return list(result.missing_materials), result


def test_a_commitment_counts_as_present_where_it_is_allowed() -> None:
    missing, result = checked(submission(Material(code="A"), Material(code="B", commitment=True)))
    assert result.ok and "B" not in missing  # type: ignore[attr-defined]


def test_a_commitment_elsewhere_is_refused_with_its_field_and_what_allows_one() -> None:
    app = submission(Material(code="A", commitment=True), Material(code="B"))
    _missing, result = checked(app)
    problem = submission_refusal(result)  # type: ignore[arg-type]
    assert (problem.status, problem.code) == (422, "commitment_not_allowed")
    assert [e.field for e in problem.errors] == ["materials.0.commitment"]
    assert "'A'" in problem.detail and "allow one: B" in problem.detail


def test_a_barred_applicant_commits_nowhere() -> None:
    app = submission(Material(code="A"), Material(code="B", commitment=True))
    _missing, result = checked(app, barred=True)
    problem = submission_refusal(result)  # type: ignore[arg-type]
    assert problem.code == "commitment_not_allowed"
    assert [e.field for e in problem.errors] == ["materials.1.commitment"]
    assert "breached" in problem.detail
    # ... but proves as anyone does.
    _missing, proving = checked(submission(Material(code="A"), Material(code="B")), barred=True)
    assert proving.ok  # type: ignore[attr-defined]


def test_an_unknown_material_is_validation_s_to_refuse() -> None:
    assert (
        commitments.commitment_refusals(ITEM, [Material(code="Z", commitment=True)], barred=True)
        == ()
    )
    assert (
        commitments.commitment_refusals(None, [Material(code="A", commitment=True)], barred=True)
        == ()
    )


def test_only_a_revocation_for_a_breached_commitment_bars() -> None:
    assert commitments.bars_applicant(CaseRevoked.TYPE, {"reason": "commitment_breached"})
    assert not commitments.bars_applicant(CaseRevoked.TYPE, {"reason": "fraud"})
    assert not commitments.bars_applicant(CaseTerminated.TYPE, {"reason": "commitment_breached"})
