import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from contracts.catalog import Scope
from contracts.common import Category, Level, Mode
from services.common.catalog import CatalogProblem, catalog_warnings, validate_catalog
from services.operators.catalog_file import (
    CatalogFileError,
    load_catalog_file,
    parse_catalog_text,
)
from services.policy.catalog_index import CatalogIndex
from services.policy.intake_rules import item_in_force
from tests.unit.catalog_data import base_catalog, catalog, index

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def problems(raw: Any) -> dict[str, str]:
    parsed, found = validate_catalog(raw)
    assert parsed is None and found
    return {p.path: p.message for p in found}


def item(raw: dict[str, Any], code: str) -> dict[str, Any]:
    return next(i for i in raw["items"] if i["code"] == code)


def test_the_test_catalog_is_sound() -> None:
    parsed, found = validate_catalog(base_catalog())
    assert found == [] and parsed is not None
    assert parsed.city.code == "T" and len(parsed.items) == 10


# --------------------------------------------------------------------------- shape


def test_not_a_mapping() -> None:
    assert validate_catalog([1, 2])[1] == [
        CatalogProblem("", "a catalog is a mapping of its sections")
    ]


def test_missing_and_unknown_sections() -> None:
    raw = base_catalog()
    del raw["calendar"]
    raw["version"] = 3
    found = problems(raw)
    assert found["calendar"] == "required section is missing"
    assert "unknown section 'version'" in found["version"]


def test_shape_errors_name_the_path() -> None:
    raw = base_catalog()
    raw["items"][3]["mode"] = "teleport"
    raw["items"][0]["materials"][0]["requird"] = True
    del raw["items"][2]["owner"]
    raw["offices"][1]["kind"] = "kiosk"
    raw["departments"][0]["level"] = "province"
    raw["districts"][0]["streets"][1]["cde"] = "x"
    found = problems(raw)
    assert "online" in found["items[3].mode"]
    assert found["items[0].materials[0].requird"].startswith("unknown field 'requird'")
    assert "required" in found["items[0].materials[0].requird"]  # lists the known fields
    assert found["items[2].owner"] == "required field is missing"
    assert "municipal_center" in found["offices[1].kind"]
    assert "departments[0].level" in found
    assert "districts[0].streets[1].cde" in found


def test_entries_with_only_unknown_fields_are_still_cross_checked() -> None:
    raw = base_catalog()
    raw["calendar"]["note"] = "x"
    raw["calendar"]["workdays"].append("2026-10-10")
    item(raw, "DEL-D")["colour"] = "red"
    item(raw, "DEL-D")["materials"][0]["hint"] = "x"
    item(raw, "DEL-D")["owner"] = "NOBODY"
    assert set(problems(raw)) == {
        "calendar.note",
        "calendar.workdays[1]",
        "items[2].colour",
        "items[2].materials[0].hint",
        "items[2].owner",
    }


def test_calendar_covers_until_is_required() -> None:
    raw = base_catalog()
    del raw["calendar"]["covers_until"]
    assert problems(raw) == {"calendar.covers_until": "required field is missing"}


def test_time_limit_required_unless_instant() -> None:
    raw = base_catalog()
    del item(raw, "DEL-D")["time_limit_days"]
    assert problems(raw) == {"items[2].time_limit_days": "required field is missing"}
    assert catalog().items[1].time_limit_days == 0  # ONL-I: instant without a limit


def test_tolerant_of_numbers_as_codes_and_spaces() -> None:
    raw = base_catalog()
    raw["city"] = {"code": 31}
    for office in raw["offices"]:
        if office["division"] == "T":
            office["division"] = 31
    for dept in raw["departments"]:
        if dept["division"] == "T":
            dept["division"] = " 31 "
    parsed = catalog(raw)
    assert parsed.city.code == "31" and parsed.city.name == ""


# --------------------------------------------------------------------------- cross references


def test_duplicate_codes() -> None:
    raw = base_catalog()
    raw["districts"].append({"code": "T1", "streets": [{"code": "T21"}]})
    raw["districts"][1]["streets"].append({"code": "T"})
    raw["offices"].append({"code": "T1-DC", "kind": "district_center", "division": "T2"})
    raw["departments"].append(
        {"code": "M-SOC", "line": "civil", "level": "municipal", "division": "T"}
    )
    raw["items"].append(dict(item(raw, "MUN-E")))
    item(raw, "DEL-D")["materials"].append({"code": "B", "name": "again"})
    found = problems(raw)
    assert found["districts[3].code"].startswith("duplicate district code 'T1'")
    assert found["districts[3].streets[0].code"].startswith("duplicate street code 'T21'")
    assert found["districts[1].streets[1].code"].startswith("duplicate street code 'T'")
    assert found["offices[6].code"].startswith("duplicate office 'T1-DC'")
    assert found["departments[7].code"].startswith("duplicate department 'M-SOC'")
    assert found["items[10].code"] == "duplicate item 'MUN-E' (first at items[6].code)"
    assert found["items[2].materials[3].code"].startswith("duplicate material 'B'")


def test_divisions_of_offices_and_departments() -> None:
    raw = base_catalog()
    raw["offices"].append({"code": "X-SC", "kind": "street_center", "division": "T9"})
    raw["offices"].append({"code": "Y-DC", "kind": "district_center", "division": "T11"})
    raw["offices"].append({"code": "Z-MC", "kind": "municipal_center", "division": "T1"})
    raw["departments"].append({"code": "D1", "line": "x", "level": "district", "division": "T9"})
    raw["departments"].append({"code": "D2", "line": "x", "level": "municipal", "division": "T1"})
    raw["departments"].append({"code": "D3", "line": "x", "level": "district", "division": "T"})
    raw["departments"].append({"code": "D4", "line": "x", "level": "street", "division": "T2"})
    found = problems(raw)
    assert found["offices[6].division"].startswith("unknown division 'T9'")
    assert "'T11' is a street" in found["offices[7].division"]
    assert "'T1' is a district" in found["offices[8].division"]
    assert found["departments[7].division"].startswith("unknown division 'T9'")
    assert "'T1' is a district" in found["departments[8].division"]
    assert "'T' is a municipal" in found["departments[9].division"]
    assert "'T2' is a district" in found["departments[10].division"]


def test_two_departments_for_one_line_level_division() -> None:
    raw = base_catalog()
    raw["departments"].append(
        {"code": "T1-MKT2", "line": "market", "level": "district", "division": "T1"}
    )
    assert "ambiguous" in problems(raw)["departments[7]"]


def test_item_owner() -> None:
    raw = base_catalog()
    item(raw, "ONL-E")["owner"] = "NOBODY"
    item(raw, "ENT-E")["owner"] = "T1-MKT"
    found = problems(raw)
    assert found["items[0].owner"] == "unknown department 'NOBODY'"
    assert "is a district department" in found["items[5].owner"]


def test_delegation_fields() -> None:
    raw = base_catalog()
    del item(raw, "DEL-D")["delegated_to"]
    item(raw, "MUN-E")["delegated_to"] = "district"
    item(raw, "DEL-S")["delegated_to"] = "municipal"
    found = problems(raw)
    assert "names delegated_to" in found["items[2].delegated_to"]
    assert "only a delegated item" in found["items[6].delegated_to"]
    assert found["items[3].delegated_to"] == "delegated_to is district or street"


def test_delegated_line_without_any_receiving_department_still_loads() -> None:
    # Gaps in the delegated line fail per case at routing (no_receiving_department), even
    # when no unit of that level exists at all: a catalog is refused only for what makes it
    # unreadable, not for a service that no one can decide yet.
    raw = base_catalog()
    item(raw, "ENT-E").update(mode="delegated", delegated_to="district")  # housing: none below
    raw["departments"] = [d for d in raw["departments"] if d["code"] != "T21-SOC"]
    assert validate_catalog(raw)[1] == []
    raw = base_catalog()
    raw["departments"] = [d for d in raw["departments"] if d["code"] != "T21-SOC"]
    assert validate_catalog(raw)[1] == []


def test_intake_levels_need_offices() -> None:
    raw = base_catalog()
    raw["offices"] = [o for o in raw["offices"] if o["kind"] != "street_center"]
    item(raw, "ENT-I")["intake_levels"] = ["street", "district"]
    found = problems(raw)
    assert "no street_center office" in found["items[4].intake_levels[0]"]
    assert "items[4].intake_levels[1]" not in found
    # DEL-S defaults to street intake; the municipal center can still take it.
    assert "items[3]" not in found


def test_item_nobody_can_take() -> None:
    raw = base_catalog()
    raw["offices"] = [o for o in raw["offices"] if o["kind"] != "municipal_center"]
    found = problems(raw)
    assert found == {"items[6]": "no office in the city may take this item at a counter"}


def test_item_numbers_and_dates() -> None:
    raw = base_catalog()
    item(raw, "ENT-E")["time_limit_days"] = -1
    item(raw, "OLD")["effective_to"] = "2019-12-31"
    item(raw, "FUT")["effective_to"] = "2030-01-01"  # same day: fine
    found = problems(raw)
    assert found["items[5].time_limit_days"] == "must not be negative"
    assert "before effective_from" in found["items[9].effective_to"]
    assert len(found) == 2


def test_calendar_problems() -> None:
    raw = base_catalog()
    raw["calendar"]["holidays"] += ["2026-10-01", "2026-10-09"]
    raw["calendar"]["workdays"] += ["2026-10-09", "2026-10-10"]
    found = problems(raw)
    assert found == {
        "calendar.holidays[5]": "2026-10-01 is listed twice",
        "calendar.workdays[2]": "2026-10-10 is listed twice",
        "calendar.workdays[1]": "2026-10-09 is both a holiday and a workday",
    }


def test_a_bad_catalog_lists_every_problem_at_once() -> None:
    raw = base_catalog()
    raw["offices"][0]["division"] = "NOWHERE"
    raw["departments"][3]["level"] = "street"
    raw["calendar"]["workdays"].append("2026-10-01")
    item(raw, "ONL-E")["owner"] = "M-NONE"
    item(raw, "DEL-D")["effective_to"] = "2025-01-01"
    item(raw, "ENT-I")["colour"] = "blue"
    raw["items"][7]["mode"] = "nope"
    found = problems(raw)
    assert set(found) == {
        "offices[0].division",
        "departments[3].division",
        "calendar.workdays[1]",
        "items[0].owner",
        "items[2].effective_to",
        "items[4].colour",
        "items[7].mode",
    }


def test_broken_entries_are_not_reported_twice() -> None:
    raw = base_catalog()
    raw["districts"][1]["name"] = ["not", "a", "name"]  # T2 fails its shape
    raw["departments"][0]["line"] = ""  # M-MKT fails its shape
    found = problems(raw)
    assert set(found) == {"districts[1].name", "departments[0].line"}


def test_problem_rendering() -> None:
    problem = CatalogProblem("items[0].owner", "unknown department 'X'")
    assert str(problem) == "items[0].owner: unknown department 'X'"
    assert problem.as_dict() == {"field": "items[0].owner", "message": "unknown department 'X'"}


# --------------------------------------------------------------------------- files


def test_yaml_keeps_codes_as_written(tmp_path: Path) -> None:
    text = "city: {code: 0101, name: x}\nnumber: 5\nflag: true\nday: 2026-01-02\n"
    data = parse_catalog_text(text)
    assert data == {
        "city": {"code": "0101", "name": "x"},
        "number": "5",
        "flag": True,
        "day": date(2026, 1, 2),
    }


def test_load_yaml_and_json_files(tmp_path: Path) -> None:
    raw = base_catalog()
    (tmp_path / "c.json").write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "c.txt").write_text(json.dumps(raw), encoding="utf-8")
    assert load_catalog_file(tmp_path / "c.json") == raw
    assert load_catalog_file(tmp_path / "c.txt") == raw
    yaml_path = tmp_path / "c.yml"
    yaml_path.write_text("\ufeffcity: {code: T}\n", encoding="utf-8")
    assert load_catalog_file(yaml_path) == {"city": {"code": "T"}}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("bad.yaml", "a: [1,", "not valid YAML"),
        ("list.yaml", "- a\n- b\n", "a catalog is a mapping"),
    ],
)
def test_unreadable_files(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogFileError, match=message):
        load_catalog_file(path)
    with pytest.raises(CatalogFileError, match="cannot read"):
        load_catalog_file(tmp_path / "missing.yaml")


def test_bad_fixture_catalog_lists_its_problems() -> None:
    found = problems(load_catalog_file(ROOT / "tests" / "fixtures" / "bad_catalog.yaml"))
    assert len(found) == 17


def test_catalog_round_trips_through_json() -> None:
    parsed = catalog()
    again, found = validate_catalog(parsed.model_dump(mode="json"))
    assert found == [] and again == parsed


# --------------------------------------------------------------------------- index


def test_index_lookups() -> None:
    idx = index()
    assert isinstance(idx, CatalogIndex)
    assert idx.items["DEL-D"].owner == "M-MKT"
    assert idx.offices["T11-SC"].division == "T11"
    assert idx.departments["T1-MKT"].level is Level.district
    dept = idx.department(line="market", level=Level.district, division="T2")
    assert dept is not None and dept.code == "T2-MKT"
    assert idx.department(line="market", level=Level.district, division="T3") is None
    assert [idx.division_level(c) for c in ("T", "T2", "T21", "X")] == [
        Level.municipal,
        Level.district,
        Level.street,
        None,
    ]
    assert [idx.district_of(c) for c in ("T", "T2", "T21", "X")] == [None, "T2", "T2", None]
    assert [o.code for o in idx.offices_by_level[Level.district]] == ["T1-DC", "T2-DC"]
    assert date(2026, 10, 10) in idx.calendar.workdays


@pytest.mark.parametrize(
    ("code", "on", "expected"),
    [
        ("DEL-D", date(2025, 12, 31), False),
        ("DEL-D", date(2026, 1, 1), True),
        ("ENT-E", date(1990, 1, 1), True),  # no dates: always
        ("OLD", date(2025, 12, 31), True),
        ("OLD", date(2026, 1, 1), False),
    ],
)
def test_item_in_force(code: str, on: date, expected: bool) -> None:
    assert item_in_force(index().items[code], on) is expected


# --------------------------------------------------------------------------- demo catalog


def test_demo_catalog() -> None:
    parsed, found = validate_catalog(load_catalog_file(ROOT / "deploy" / "demo" / "catalog.yaml"))
    assert found == [] and parsed is not None
    idx = CatalogIndex(parsed)
    assert len(parsed.districts) >= 3 and all(len(d.streets) >= 2 for d in parsed.districts)
    assert len(parsed.departments) >= 8 and len({d.line for d in parsed.departments}) >= 4
    assert {d.level for d in parsed.departments} == set(Level)
    assert len(parsed.items) >= 24
    kinds = {(i.mode.value, i.delegated_to) for i in parsed.items}
    assert {
        ("online", None),
        ("delegated", Level.district),
        ("delegated", Level.street),
        ("entrusted", None),
        ("municipal", None),
    } <= kinds
    assert {i.category for i in parsed.items} == {"enterprise", "individual"}
    assert sum(i.instant for i in parsed.items) >= 3
    assert {i.result.e_license for i in parsed.items} == {True, False}
    today = date(2026, 11, 29)
    assert any(i.effective_from and i.effective_from > today for i in parsed.items)
    assert any(i.effective_to and i.effective_to < today for i in parsed.items)
    assert parsed.calendar.covers_until == date(2027, 12, 31)
    for district in parsed.districts:
        assert idx.offices_by_level[Level.district]
        assert any(o.division == district.code for o in parsed.offices)


def test_partner_catalog_is_a_second_city_beside_the_demo() -> None:
    """`make federation`'s region 2: valid on its own, without warnings, with a city code,
    divisions, offices and departments of its own, every mode, and `cross_region` items of
    several modes beside items that stay `city` (DESIGN.md §9)."""
    demo, _ = validate_catalog(load_catalog_file(ROOT / "deploy" / "demo" / "catalog.yaml"))
    parsed, found = validate_catalog(
        load_catalog_file(ROOT / "deploy" / "demo" / "partner-catalog.yaml")
    )
    assert found == [] and parsed is not None and demo is not None
    assert catalog_warnings(parsed) == []
    assert parsed.city.code != demo.city.code
    assert all(d.code.startswith(parsed.city.code) for d in parsed.districts)
    assert all(o.code.startswith(parsed.city.code) for o in parsed.offices)
    assert all(d.code.startswith(parsed.city.code) for d in parsed.departments)
    assert {i.mode for i in parsed.items} == set(Mode)
    crossing = [i for i in parsed.items if i.scope is Scope.cross_region]
    assert len({i.mode for i in crossing}) >= 3
    assert {i.category for i in crossing} == set(Category)
    assert any(i.scope is Scope.city for i in parsed.items)
    assert {i.code for i in parsed.items} & {i.code for i in demo.items}


def test_both_demo_catalogs_have_cross_region_items_of_several_modes() -> None:
    """Each region of `make federation` offers the other's applicants some of its items
    (通办范围), of several modes, and keeps the rest to its own counters."""
    for name in ("catalog.yaml", "partner-catalog.yaml"):
        parsed, found = validate_catalog(load_catalog_file(ROOT / "deploy" / "demo" / name))
        assert found == [] and parsed is not None, name
        crossing = [i for i in parsed.items if i.scope is Scope.cross_region]
        assert len({(i.mode, i.delegated_to) for i in crossing}) >= 3, name
        assert any(not i.instant for i in crossing), name
        assert len(crossing) < len(parsed.items), name


# --------------------------------------------------------------------------- fewer materials (§7)


def test_materials_may_allow_reuse_commitment_and_deferral() -> None:
    raw = base_catalog()
    issuing = item(raw, "ONL-I")
    issuing["result"]["license_type"] = "residence_cert"
    taking = item(raw, "DEL-D")
    taking["defer_days"] = 3
    taking["verify_days"] = 10
    taking["materials"][0].update(license_type="residence_cert", commitment=True)
    taking["materials"][1]["deferrable"] = True
    parsed, found = validate_catalog(raw)
    assert found == [] and parsed is not None
    snapshot = {i.code: i for i in parsed.items}["DEL-D"]
    assert (snapshot.defer_days, snapshot.verify_days) == (3, 10)
    assert snapshot.materials[0].license_type == "residence_cert"
    assert snapshot.materials[0].commitment and snapshot.materials[1].deferrable
    assert catalog_warnings(parsed) == []
    defaults = {i.code: i for i in parsed.items}["ONL-E"]
    assert (defaults.defer_days, defaults.verify_days) == (5, 20)


def test_commitment_and_deferral_stand_in_for_required_materials_only() -> None:
    raw = base_catalog()
    materials = item(raw, "DEL-D")["materials"]
    materials.append(
        {"code": "Z", "required": False, "commitment": True, "deferrable": True},
    )
    item(raw, "ONL-E")["result"]["license_type"] = "notice_cert"  # e_license is false
    item(raw, "ONL-I")["verify_days"] = 0
    found = problems(raw)
    at = "items[2].materials[3]"
    assert "only a required material can allow a commitment" in found[f"{at}.commitment"]
    assert "only a required material can allow deferral" in found[f"{at}.deferrable"]
    assert "e_license: true" in found["items[0].result.license_type"]
    assert "greater than or equal to 1" in found["items[1].verify_days"]


def test_a_licence_type_no_item_issues_is_a_warning_not_an_error() -> None:
    raw = base_catalog()
    item(raw, "DEL-D")["materials"][1]["license_type"] = "business_licence"
    parsed, found = validate_catalog(raw)
    assert found == [] and parsed is not None
    [warning] = catalog_warnings(parsed)
    assert warning.path == "items[2].materials[1].license_type"
    assert "'business_licence'" in warning.message
