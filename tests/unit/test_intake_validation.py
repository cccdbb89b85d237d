from datetime import date
from typing import Any

import pytest

from contracts.common import Category, Channel, Delivery
from services.common.web import problem_of
from services.intake.domain.validation import (
    ValidationResult,
    credit_code_problem,
    resident_id_problem,
    submission_refusal,
    supplement_refusal,
    validate_submission,
)
from tests.unit.catalog_data import TODAY, application, credit_code, index, resident_id

pytestmark = pytest.mark.unit

INDEX = index()


def check(item: str, **kwargs) -> ValidationResult:
    return validate_submission(INDEX, application(item, **kwargs), today=TODAY)


def refused(result: ValidationResult, code: str, field: str) -> dict[str, Any]:
    assert not result.ok and result.refusal is not None
    assert result.refusal.code == code
    body = problem_of(submission_refusal(result)).body()
    assert body["status"] == 422 and body["code"] == code and body["title"]
    assert any(e["field"] == field and e["code"] == code and e["message"] for e in body["errors"])
    return body


# --------------------------------------------------------------------------- accepted


def test_sound_submission_lists_missing_required_materials() -> None:
    result = check("DEL-D", office="T1-DC", division="T1", materials=("B",))
    assert result.ok and result.refusal is None
    assert result.missing_materials == ("A",)  # C is optional
    assert result.item is not None and result.item.code == "DEL-D"


def test_complete_materials() -> None:
    assert check("DEL-D", office="T1-DC", materials=("A", "B", "A")).missing_materials == ()


def test_division_outside_the_city_is_left_to_routing() -> None:
    assert check("DEL-D", office="T1-DC", division="ELSEWHERE").ok


def test_id_number_is_normalised() -> None:
    result = check("DEL-S", office="T11-SC", id_number=" 11010519491231002x ")
    assert result.ok and result.id_number == "11010519491231002X"


# --------------------------------------------------------------------------- ID numbers


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("1101051949123100", "18 characters; this one has 16"),
        ("11010519491231002XX", "has 19"),
        ("11010519A91231002X", "digits in its first 17"),
        ("11010519491231002Y", "ends in a digit or X"),
        ("110105194912310021", "check character"),
        (resident_id("11010519491331002"), "not a valid birth date"),
        (resident_id("11010520990101002"), "in the future"),
    ],
)
def test_resident_id_problems(value: str, fragment: str) -> None:
    problem = resident_id_problem(value, today=TODAY)
    assert problem is not None and fragment in problem and "GB 11643" in problem


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("91350100M000100Y4", "18 characters; this one has 17"),
        ("9135A100M000100Y43", "6-digit region code"),
        ("91350100M0001O0Y43", "except I, O, Z, S, V; found O"),
        ("91350100M000100Y44", "check character"),
    ],
)
def test_credit_code_problems(value: str, fragment: str) -> None:
    problem = credit_code_problem(value)
    assert problem is not None and fragment in problem and "GB 32100" in problem


def test_valid_ids() -> None:
    assert resident_id_problem(resident_id(), today=TODAY) is None
    assert credit_code_problem(credit_code()) is None
    assert credit_code_problem(credit_code("Y1110000600037341")) is None  # authority letter


def test_invalid_id_number_follows_the_applicants_category() -> None:
    body = refused(
        check("DEL-D", office="T1-DC", category=Category.enterprise, id_number=resident_id()),
        "invalid_id_number",
        "applicant.id_number",
    )
    assert "unified social credit code" in body["detail"]
    body = refused(
        check("DEL-S", office="T11-SC", id_number="110105194912310021"),
        "invalid_id_number",
        "applicant.id_number",
    )
    assert "resident ID" in body["detail"]


# --------------------------------------------------------------------------- item, office


def test_unknown_item() -> None:
    result = check("NOPE", office="T1-DC")
    refused(result, "unknown_item", "item_code")
    assert result.missing_materials == ()


@pytest.mark.parametrize("item", ["FUT", "OLD"])
def test_item_not_effective(item: str) -> None:
    refused(check(item, office="T1-DC"), "item_not_effective", "item_code")


def test_unknown_office() -> None:
    body = refused(check("DEL-D", office="T7-DC"), "unknown_office", "office_code")
    assert "T1-DC" in body["guidance"]["offices"]


def test_counter_without_office() -> None:
    refused(check("DEL-D", channel=Channel.counter), "unknown_office", "office_code")


def test_office_not_allowed_with_guidance() -> None:
    body = refused(
        check("DEL-D", office="T12-SC", division="T12"), "office_not_allowed", "office_code"
    )
    assert body["guidance"] == {
        "levels": ["municipal", "district"],
        "office_kinds": ["municipal_center", "district_center"],
        "offices": ["T1-DC", "T-MC", "T2-DC"],
        "online": False,
    }


def test_online_channel_for_a_counter_item() -> None:
    refused(check("ENT-I", channel=Channel.online), "office_not_allowed", "channel")


# --------------------------------------------------------------------------- materials, delivery


def test_unknown_material_lists_the_valid_codes() -> None:
    body = refused(
        check("DEL-D", office="T1-DC", materials=("A", "Z")),
        "unknown_material",
        "materials[1].code",
    )
    assert "A, B, C" in body["detail"]


def test_postal_needs_an_address() -> None:
    refused(
        check("DEL-D", office="T1-DC", delivery=Delivery(method="postal", address="  ")),
        "invalid_delivery",
        "delivery.address",
    )
    assert check("DEL-D", office="T1-DC", delivery=Delivery(method="postal", address="一路1号")).ok


def test_counter_pickup_needs_a_counter() -> None:
    refused(
        check("ONL-E", channel=Channel.online, delivery=Delivery(method="counter_pickup")),
        "invalid_delivery",
        "delivery.method",
    )
    assert check("ONL-E", office="T1-DC", delivery=Delivery(method="counter_pickup")).ok


# --------------------------------------------------------------------------- several at once


def test_every_refusal_is_listed_and_the_first_names_the_problem() -> None:
    result = validate_submission(
        INDEX,
        application(
            "DEL-D",
            office="T11-SC",
            id_number="123",
            materials=("Q",),
            delivery=Delivery(method="postal"),
        ),
        today=date(2025, 6, 1),
    )
    codes = [r.code for r in result.refusals]
    assert codes == [
        "invalid_id_number",
        "item_not_effective",
        "office_not_allowed",
        "unknown_material",
        "invalid_delivery",
    ]
    body = problem_of(submission_refusal(result)).body("/v1/cases")
    assert body["code"] == "invalid_id_number" and body["instance"] == "/v1/cases"
    assert [e["field"] for e in body["errors"]] == [
        "applicant.id_number",
        "item_code",
        "office_code",
        "materials[0].code",
        "delivery.address",
    ]
    assert "guidance" in body and "Also:" in body["detail"]


def test_problem_of_an_accepted_submission_is_a_bug() -> None:
    with pytest.raises(ValueError):
        submission_refusal(check("DEL-D", office="T1-DC"))


# --------------------------------------------------------------------------- supplements


def test_a_supplement_with_an_unknown_material_is_refused_whole() -> None:
    item = INDEX.items["DEL-D"]
    assert supplement_refusal(item, ["A", "C"]) is None
    refusal = supplement_refusal(item, ["A", "Z", "Y"])
    assert refusal is not None
    body = problem_of(refusal).body()
    assert body["status"] == 422 and body["code"] == "unknown_material"
    assert body["title"] == "Unknown material code"
    assert body["detail"] == "Z, Y not among A, B, C"
    assert body["errors"] == [
        {"field": "materials", "message": "unknown Z"},
        {"field": "materials", "message": "unknown Y"},
    ]
