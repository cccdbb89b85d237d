"""Deferral (容缺受理) at intake: `deferred: true` only on a deferrable material, where it
counts as present (services/intake/domain/validation.py); which late materials a case takes,
and how its view lists them (services/intake/domain/deferral.py); the due day from acceptance
(services/intake/domain/lifecycle.py)."""

from __future__ import annotations

from datetime import date

import pytest

from contracts.common import Application, CaseStatus, Material
from contracts.events import CaseAccepted
from services.common.web import problem_of
from services.intake.domain import deferral
from services.intake.domain.lifecycle import case_changes
from services.intake.domain.validation import submission_refusal, validate_submission
from services.policy.catalog_index import CatalogIndex
from tests.unit.catalog_data import TODAY, application, base_catalog, index

pytestmark = pytest.mark.unit


def deferrable_index() -> CatalogIndex:
    raw = base_catalog()
    item = next(i for i in raw["items"] if i["code"] == "DEL-D")
    item["materials"][1]["deferrable"] = True  # B (营业执照) may come after acceptance
    return index(raw)


INDEX = deferrable_index()


def submission(*materials: Material) -> Application:
    app = application("DEL-D", office="T1-DC")
    return app.model_copy(update={"materials": list(materials)})


def test_a_deferred_material_counts_as_present() -> None:
    app = submission(Material(code="A"), Material(code="B", deferred=True))
    result = validate_submission(INDEX, app, today=TODAY)
    assert result.ok and result.missing_materials == ()


def test_other_required_materials_are_still_missing() -> None:
    result = validate_submission(INDEX, submission(Material(code="B", deferred=True)), today=TODAY)
    assert result.ok and result.missing_materials == ("A",)


def test_deferral_of_a_key_material_is_refused_with_its_field() -> None:
    app = submission(Material(code="A", deferred=True), Material(code="B"))
    result = validate_submission(INDEX, app, today=TODAY)
    assert not result.ok and result.refusal is not None
    body = problem_of(submission_refusal(result)).body()
    assert body["status"] == 422 and body["code"] == "deferral_not_allowed"
    (error,) = body["errors"]
    assert error["field"] == "materials[0].deferred" and error["code"] == "deferral_not_allowed"
    assert "deferrable materials: B" in error["message"]


def test_nothing_is_deferrable_in_a_catalog_that_says_nothing() -> None:
    app = submission(Material(code="A"), Material(code="B", deferred=True))
    result = validate_submission(index(), app, today=TODAY)
    assert result.refusal is not None and result.refusal.code == "deferral_not_allowed"
    assert "deferrable materials: none" in result.refusal.detail


def test_late_materials_are_taken_after_acceptance_only_and_only_if_owed() -> None:
    rows = deferral.deferred_rows(["B", "C", "B"])
    assert deferral.outstanding(rows) == ["B", "C"]
    for status in (CaseStatus.accepted, CaseStatus.approval_held):
        assert deferral.takes_late_materials(status, ["B"], ["B", "C"])
    assert not deferral.takes_late_materials(CaseStatus.accepted, ["B", "A"], ["B", "C"])
    assert not deferral.takes_late_materials(CaseStatus.accepted, [], ["B"])
    for status in (CaseStatus.submitted, CaseStatus.routed, CaseStatus.terminated):
        assert not deferral.takes_late_materials(status, ["B"], ["B"])
    received = deferral.mark_received(rows, ["C"])
    assert deferral.outstanding(received) == ["B"]
    view = deferral.deferred_view(received, date(2026, 10, 9))
    assert [(m.code, m.due, m.received) for m in view] == [
        ("B", date(2026, 10, 9), False),
        ("C", date(2026, 10, 9), True),
    ]


def test_acceptance_sets_the_due_day_of_the_deferred_materials() -> None:
    data = {"deadline": "2026-10-20", "deferred_due": "2026-10-09"}
    changes = case_changes(CaseStatus.routed, CaseAccepted.TYPE, data)
    assert changes["deferred_due"] == date(2026, 10, 9)
    assert changes["status"] == CaseStatus.accepted.value
    assert "deferred_due" not in case_changes(
        CaseStatus.routed, CaseAccepted.TYPE, {"deadline": None}
    )
