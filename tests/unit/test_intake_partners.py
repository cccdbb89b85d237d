"""Cases across regions at intake (DESIGN.md §9), pure parts: which catalog a counter reads an
applicant's item code in, the refusals of a partner applicant at the counter, whether a
forwarded case is adopted, and how a partner's events move the counter's view."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from contracts.common import CaseStatus, Channel, Handover, Material
from contracts.events import CaseForwarded
from services.common.envelope import Envelope
from services.common.web import problem_of
from services.intake.domain.lifecycle import case_changes
from services.intake.domain.validation import submission_refusal, validate_submission
from services.intake.domain.xregion import (
    IMPORTED_TYPES,
    adopted_application,
    adoption_refusal,
    import_outbox_id,
    municipal_center,
)
from services.intake.handlers.case_events import timeline_source
from services.policy.partner_rules import catalog_of_applicant, cross_region_items
from tests.unit.catalog_data import TODAY, application, base_catalog, index

pytestmark = pytest.mark.unit

OWN = index()


def partner_raw() -> dict[str, Any]:
    """City P (伙伴市), the test city's shape under other codes: DEL-D (enterprise) and FUT are
    cross_region there, DEL-D with a material of its own (PA); DEL-S stays a city item."""
    raw = base_catalog()

    def recode(code: str) -> str:
        return "P" + code[1:] if code.startswith("T") else code

    raw["city"] = {"code": "P", "name": "伙伴市"}
    for district in raw["districts"]:
        district["code"] = recode(district["code"])
        for street in district["streets"]:
            street["code"] = recode(street["code"])
    for office in raw["offices"]:
        office["code"], office["division"] = recode(office["code"]), recode(office["division"])
    for dept in raw["departments"]:
        dept["code"], dept["division"] = recode(dept["code"]), recode(dept["division"])
    for item in raw["items"]:
        if item["code"] in ("DEL-D", "FUT"):
            item["scope"] = "cross_region"
        if item["code"] == "DEL-D":
            item["materials"] = [{"code": "PA", "name": "申请表", "required": True}]
    return raw


PARTNER = index(partner_raw())
PARTNERS = {"P": PARTNER}


def partner_check(item: str, **kwargs: Any) -> Any:
    kwargs.setdefault("division", "P11")
    return validate_submission(OWN, application(item, **kwargs), today=TODAY, partner=PARTNER)


def refusal_body(result: Any, code: str) -> dict[str, Any]:
    assert not result.ok and result.refusal is not None and result.refusal.code == code
    body: dict[str, Any] = problem_of(submission_refusal(result)).body()
    assert body["status"] == 422 and body["code"] == code
    return body


# --------------------------------------------------------------------------- which catalog


def test_the_applicants_jurisdiction_picks_the_catalog() -> None:
    assert catalog_of_applicant(OWN, PARTNERS, "T11") is None  # in this region
    assert catalog_of_applicant(OWN, PARTNERS, "P11") is PARTNER  # a partner's street
    assert catalog_of_applicant(OWN, PARTNERS, "P1") is PARTNER  # its district
    assert catalog_of_applicant(OWN, PARTNERS, "P") is PARTNER  # its city code
    assert catalog_of_applicant(OWN, PARTNERS, "ELSEWHERE") is None  # routing fails it
    assert catalog_of_applicant(OWN, {}, "P11") is None


def test_a_partners_counter_items_are_its_cross_region_items_in_force() -> None:
    assert [i.code for i in cross_region_items(PARTNER, TODAY)] == ["DEL-D"]  # FUT: not yet
    assert cross_region_items(OWN, TODAY) == []


# --------------------------------------------------------------------------- at the counter


def test_a_partner_applicant_is_taken_at_any_office_here_against_the_partners_item() -> None:
    # a street center takes an enterprise item: any office here takes a cross_region item
    result = partner_check("DEL-D", office="T11-SC")
    assert result.ok, result.refusals
    assert result.item is not None and result.item.code == "DEL-D"
    assert result.missing_materials == ("PA",)  # the partner's item, not this city's DEL-D
    assert partner_check("DEL-D", office="T-MC", materials=("PA",)).missing_materials == ()


def test_materials_are_judged_against_the_partners_item() -> None:
    result = partner_check("DEL-D", office="T1-DC", materials=("A",))
    body = refusal_body(result, "unknown_material")
    assert "PA" in body["detail"]


@pytest.mark.parametrize(
    ("item", "kwargs", "code", "field"),
    [
        ("NOPE", {"office": "T1-DC"}, "unknown_item", "item_code"),
        ("FUT", {"office": "T1-DC"}, "item_not_effective", "item_code"),
        ("DEL-S", {"office": "T11-SC"}, "not_cross_region", "item_code"),
        ("DEL-D", {"channel": Channel.online}, "office_not_allowed", "channel"),
        ("DEL-D", {"office": "P1-DC"}, "unknown_office", "office_code"),  # the partner's office
    ],
)
def test_a_partner_applicant_is_refused_at_once_naming_the_partner(
    item: str, kwargs: dict[str, Any], code: str, field: str
) -> None:
    body = refusal_body(partner_check(item, **kwargs), code)
    assert any(e["field"] == field and e["code"] == code for e in body["errors"])
    assert "伙伴市（P）" in body["detail"], body["detail"]  # Chinese
    assert "伙伴市 (P)" in body["detail"], body["detail"]  # and English


def test_not_cross_region_says_where_to_apply() -> None:
    body = refusal_body(partner_check("DEL-S", office="T11-SC"), "not_cross_region")
    assert "apply in 伙伴市 or on its online channel" in body["detail"]


def test_office_refusals_carry_guidance_to_this_regions_offices() -> None:
    body = refusal_body(partner_check("DEL-D", office="NOWHERE"), "unknown_office")
    assert body["guidance"]["online"] is False
    assert "T-MC" in body["guidance"]["offices"]


def test_an_applicant_of_this_region_is_checked_as_before() -> None:
    # DEL-S is a city item here; without a partner nothing changes
    result = validate_submission(OWN, application("DEL-S", office="T11-SC"), today=TODAY)
    assert result.ok and result.missing_materials == ("ID",)


# --------------------------------------------------------------------------- adoption

SUBMITTED = datetime(2026, 6, 15, 2, 0, tzinfo=UTC)


def forwarded(item: str = "DEL-D", division: str = "P11") -> CaseForwarded:
    app = application(item, office="T1-DC", division=division, materials=("PA",))
    return CaseForwarded(
        case_id="T-20260615-0000000001",
        from_city="T",
        to_city="P",
        item_code=item,
        catalog_version=3,
        application=app,
        submitted_at=SUBMITTED,
        handover=Handover(
            office_code="T1-DC",
            signed_at=SUBMITTED,
            digest="0" * 64,
            algorithm="ed25519",
            key_id="T1-DC:00000000",
            signature="AA==",
        ),
        forwarded_at=SUBMITTED,
    )


def test_a_sound_forwarded_case_is_adopted() -> None:
    assert adoption_refusal(forwarded(), PARTNER, handover_problem=None, submitted_on=TODAY) is None


@pytest.mark.parametrize(
    ("case", "problem", "on", "code"),
    [
        (forwarded(), "bad_signature: forged", TODAY, "handover_invalid"),
        (forwarded("NOPE"), None, TODAY, "unknown_item"),
        (forwarded(), None, date(2019, 1, 1), "item_not_effective"),
        (forwarded("DEL-S"), None, TODAY, "not_cross_region"),
        (forwarded(division="T11"), None, TODAY, "out_of_jurisdiction"),
    ],
)
def test_a_forwarded_case_is_refused_with_the_first_check_that_fails(
    case: CaseForwarded, problem: str | None, on: date, code: str
) -> None:
    refusal = adoption_refusal(case, PARTNER, handover_problem=problem, submitted_on=on)
    assert refusal is not None and refusal.code == code and refusal.reason
    assert case.application.applicant.id_number not in refusal.reason  # no personal data


def test_the_handover_is_checked_first() -> None:
    refusal = adoption_refusal(
        forwarded("NOPE"), PARTNER, handover_problem="digest_mismatch: altered", submitted_on=TODAY
    )
    assert refusal is not None and refusal.code == "handover_invalid"
    assert "digest_mismatch" in refusal.reason


def test_an_adopted_case_is_taken_at_the_municipal_center_over_the_counter() -> None:
    center = municipal_center(PARTNER)
    assert center is not None and center.code == "P-MC"
    origin = forwarded().application.model_copy(
        update={"materials": [Material(code="PA", sha256="a" * 64)]}
    )
    adopted = adopted_application(origin, center.code)
    assert (adopted.office_code, adopted.channel) == ("P-MC", Channel.counter)
    assert adopted.applicant == origin.applicant and adopted.materials == origin.materials
    assert adopted.delivery == origin.delivery


def test_an_imported_event_has_an_outbox_row_of_its_own() -> None:
    row = import_outbox_id("event-1", "T")
    assert row != "event-1" and len(row) == 64
    assert row != import_outbox_id("event-1", "Q")
    assert "gov.case.withdrawn.v1" in IMPORTED_TYPES
    assert "gov.case.routed.v1" not in IMPORTED_TYPES  # the origin's routing is its own


# --------------------------------------------------------------------------- the counter's view


def test_a_partners_routed_event_moves_the_status_but_keeps_the_route() -> None:
    data = {"route": {"path": "entrusted"}}
    own = case_changes(CaseStatus.submitted, "gov.case.routed.v1", data)
    theirs = case_changes(CaseStatus.submitted, "gov.case.routed.v1", data, from_partner=True)
    assert own["route"] == data["route"] and "route" not in theirs
    assert theirs["status"] == own["status"] == "routed"
    accepted = case_changes(
        CaseStatus.routed, "gov.case.accepted.v1", {"deadline": "2026-06-22"}, from_partner=True
    )
    assert accepted["status"] == "accepted" and accepted["deadline"] == date(2026, 6, 22)


def test_another_regions_event_names_its_city_in_the_timeline() -> None:
    event = Envelope(type="gov.case.accepted.v1", source="/tongban/approval", subject="c", data={})
    assert timeline_source(event) == "/tongban/approval"
    relayed = Envelope(
        type="gov.case.accepted.v1",
        source="/tongban/approval",
        subject="c",
        data={},
        fromcity="LZ",
    )
    assert timeline_source(relayed) == "LZ:/tongban/approval"
