"""Catalog bundles (一件事, DESIGN.md §8): what a load refuses, every problem listed at once."""

from typing import Any

import pytest

from services.common.catalog import validate_catalog
from tests.unit.catalog_data import base_catalog

pytestmark = pytest.mark.unit


def with_bundle(**bundle: Any) -> dict[str, Any]:
    raw = base_catalog()
    raw["bundles"] = [
        {
            "code": "B-OPEN",
            "name": "开办企业一件事",
            "category": "enterprise",
            "lead": "M-MKT",
            "time_limit_days": 10,
            "questions": [
                {"code": "big", "text": "面积是否超过300平方米", "type": "boolean"},
                {"code": "kind", "type": "choice", "options": ["shop", "factory"]},
            ],
            "members": [
                {"item": "ONL-E"},
                {"item": "DEL-D", "after": ["ONL-E"]},
                {"item": "ENT-E", "when": {"big": True}},
                {"item": "MUN-E", "when": {"big": True, "kind": "factory"}, "after": ["ENT-E"]},
            ],
            **bundle,
        }
    ]
    return raw


def problems(raw: dict[str, Any]) -> dict[str, str]:
    parsed, found = validate_catalog(raw)
    assert parsed is None and found
    return {p.path: p.message for p in found}


def test_a_sound_bundle_loads_with_its_defaults() -> None:
    parsed, found = validate_catalog(with_bundle())
    assert found == [] and parsed is not None
    [bundle] = parsed.bundles
    assert bundle.intake_levels is None and bundle.effective_from is None
    assert [m.item for m in bundle.members] == ["ONL-E", "DEL-D", "ENT-E", "MUN-E"]
    assert bundle.members[3].when == {"big": True, "kind": "factory"}


def test_a_catalog_without_bundles_still_loads() -> None:
    parsed, found = validate_catalog(base_catalog())
    assert found == [] and parsed is not None and parsed.bundles == []


def test_every_member_problem_is_listed() -> None:
    raw = with_bundle(
        lead="NOBODY",
        members=[
            {"item": "ONL-E"},
            {"item": "ONL-I"},  # an individual item in an enterprise bundle
            {"item": "GHOST"},
            {"item": "DEL-D", "when": {"unasked": True}, "after": ["ONL-E", "MUN-E"]},
            {"item": "ENT-E", "when": {"big": "yes", "kind": "office"}},
            {"item": "ONL-E"},
        ],
    )
    found = problems(raw)
    assert found["bundles[0].lead"] == "unknown department 'NOBODY'"
    assert "individual" in found["bundles[0].members[1].item"]
    assert found["bundles[0].members[2].item"] == "unknown item 'GHOST'"
    assert "undeclared question 'unasked'" in found["bundles[0].members[3].when.unasked"]
    assert "not a member" in found["bundles[0].members[3].after[1]"]
    assert "true or false" in found["bundles[0].members[4].when.big"]
    assert "shop, factory" in found["bundles[0].members[4].when.kind"]
    assert "duplicate member 'ONL-E'" in found["bundles[0].members[5].item"]


def test_a_cycle_of_after_is_refused_with_its_path() -> None:
    raw = with_bundle(
        members=[
            {"item": "ONL-E", "after": ["ENT-E"]},
            {"item": "DEL-D", "after": ["ONL-E"]},
            {"item": "ENT-E", "after": ["DEL-D"]},
            {"item": "MUN-E", "after": ["MUN-E"]},
        ]
    )
    found = problems(raw)
    assert found["bundles[0].members"].startswith("after has a cycle: ")
    path = found["bundles[0].members"].removeprefix("after has a cycle: ").split(" -> ")
    assert path[0] == path[-1] and set(path) == {"ONL-E", "DEL-D", "ENT-E"}
    assert "cannot wait for itself" in found["bundles[0].members[3].after[0]"]


def test_a_prerequisite_the_answers_can_leave_out_is_refused() -> None:
    # ENT-E exists only when big; a dependent created whatever the answers would wait for ever.
    raw = with_bundle(
        members=[
            {"item": "ENT-E", "when": {"big": True}},
            {"item": "MUN-E", "after": ["ENT-E"]},
        ]
    )
    assert "give 'MUN-E' the same conditions" in problems(raw)["bundles[0].members[1].after[0]"]


def test_a_member_not_in_force_whenever_the_bundle_is() -> None:
    # DEL-D is in force from 2026-01-01; OLD ended 2025-12-31.
    early = problems(with_bundle(effective_from="2025-06-01"))
    assert "from 2026-01-01" in early["bundles[0].members[1].item"]
    ended = problems(with_bundle(members=[{"item": "ONL-E"}, {"item": "OLD"}]))
    assert "until 2025-12-31" in ended["bundles[0].members[1].item"]


def test_questions_and_shape() -> None:
    found = problems(
        with_bundle(
            questions=[
                {"code": "big", "type": "boolean", "options": ["x", "y"]},
                {"code": "kind", "type": "choice", "options": ["only"]},
                {"code": "big", "type": "boolean"},
            ],
            effective_from="2027-01-01",
            effective_to="2026-01-01",
        )
    )
    assert "true or false" in found["bundles[0].questions[0].options"]
    assert "at least two options" in found["bundles[0].questions[1].options"]
    assert "duplicate question 'big'" in found["bundles[0].questions[2].code"]
    assert "before effective_from" in found["bundles[0].effective_to"]
    # Shape first: an entry that does not parse is reported field by field.
    shape = problems(with_bundle(members=[], time_limit_days=-1))
    assert "bundles[0].members" in shape and "bundles[0].time_limit_days" in shape


def test_duplicate_bundles_and_unknown_fields() -> None:
    raw = with_bundle()
    raw["bundles"].append({**raw["bundles"][0], "colour": "red"})
    found = problems(raw)
    assert "duplicate bundle 'B-OPEN'" in found["bundles[1].code"]
    assert "bundles[1].colour" in found
