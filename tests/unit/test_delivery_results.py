import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from contracts.common import CaseStatus, DeliveryMethod, ItemSnapshot, ResultDocument
from contracts.events import (
    CaseApproved,
    CaseClosed,
    CaseDelivered,
    CaseDenied,
    CaseResultIssued,
    CaseRevoked,
)
from contracts.rest import LicenseStatus
from services.delivery.domain.results import (
    DECISION_LETTER_KIND,
    DeliveryFacts,
    UndeliverableError,
    canonical_json,
    city_time,
    content_sha256,
    delivery_events,
    e_licence_content,
    is_tracking_number,
    issue_result,
    license_issued,
    license_revoked,
    license_status,
    plan_delivery,
    s10_check_digit,
    tracking_number,
)

pytestmark = pytest.mark.unit

ISSUED_AT = datetime(2026, 11, 29, 2, 3, 4, tzinfo=UTC)  # 10:03:04 in the city
TOKEN = "0123456789abcdef"


def item(**overrides: Any) -> ItemSnapshot:
    fields: dict[str, Any] = {
        "code": "MKT-0001",
        "name": "食品经营许可",
        "instant": False,
        "time_limit_days": 5,
        "result_kind": "licence",
        "e_license": True,
    }
    return ItemSnapshot(**(fields | overrides))


def decision_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "case_id": "HC-20261129-ABCDE12345",
        "department": "HC01-MKT",
        "decided_at": ISSUED_AT,
        "reason": None,
        "item": item(),
        "delivery_method": DeliveryMethod.electronic,
        "delivery_address": None,
        "intake_office": "HC01-DC",
        "applicant_name": "海城湖滨餐饮有限公司",
        "applicant_id_number": "91310000MA1FL8TQ4X",
    }
    return fields | overrides


def approved(**overrides: Any) -> CaseApproved:
    return CaseApproved(**decision_fields(**overrides))


def denied(**overrides: Any) -> CaseDenied:
    fields = decision_fields(reason="场所不符合要求") | {
        "legal_basis": "《食品经营许可管理办法》第十条"
    }
    return CaseDenied(**(fields | overrides))


# -- canonical content and hash ---------------------------------------------------------------


def licence_content(**overrides: Any) -> dict[str, str]:
    content = e_licence_content(
        license_id="EL-MKT-0001-20261129-0123456789ABCDEF",
        decision=approved(),
        issued_at=ISSUED_AT,
    )
    return content | overrides


def test_canonical_json_sorts_keys_without_spaces_and_keeps_chinese() -> None:
    assert canonical_json({"b": "许可", "a": "1"}) == '{"a":"1","b":"许可"}'.encode()


def test_hash_is_the_sha256_of_the_canonical_bytes() -> None:
    content = licence_content()
    assert content_sha256(content) == hashlib.sha256(canonical_json(content)).hexdigest()


def test_hash_is_stable_for_the_same_content_in_any_key_order() -> None:
    content = licence_content()
    reordered = dict(reversed(list(content.items())))
    assert content_sha256(content) == content_sha256(reordered)
    assert content_sha256(content) == content_sha256(json.loads(json.dumps(content)))


def test_licence_content_has_exactly_the_licence_fields() -> None:
    assert licence_content() == {
        "license_id": "EL-MKT-0001-20261129-0123456789ABCDEF",
        "case_id": "HC-20261129-ABCDE12345",
        "item_code": "MKT-0001",
        "item_name": "食品经营许可",
        "holder_name": "海城湖滨餐饮有限公司",
        "holder_id_number": "91310000MA1FL8TQ4X",
        "issuing_department": "HC01-MKT",
        "issued_at": "2026-11-29T10:03:04+08:00",
    }


@pytest.mark.parametrize("field", sorted(licence_content()))
def test_hash_changes_with_any_field(field: str) -> None:
    original = licence_content()
    changed = licence_content(**{field: original[field] + "X"})
    assert content_sha256(changed) != content_sha256(original)


def test_times_are_written_in_city_time_to_the_second() -> None:
    assert city_time(datetime(2026, 12, 31, 16, 30, 0, 999_999, tzinfo=UTC)) == (
        "2027-01-01T00:30:00+08:00"
    )
    with pytest.raises(ValueError):
        city_time(datetime(2026, 1, 1))


# -- what a decision issues -------------------------------------------------------------------


def test_approval_of_an_e_licence_item_issues_a_verifiable_e_licence() -> None:
    issued = issue_result(approved(), issued_at=ISSUED_AT, license_token=TOKEN)
    assert issued.outcome == "approved"
    assert issued.license_id == "EL-MKT-0001-20261129-0123456789ABCDEF"
    assert issued.document == ResultDocument(
        kind="licence",
        license_id=issued.license_id,
        sha256=content_sha256(issued.content),
        title="食品经营许可（电子证照）",
    )
    assert issued.content["license_id"] == issued.license_id
    assert issued.content["holder_id_number"] == "91310000MA1FL8TQ4X"


def test_licence_id_date_is_the_city_date() -> None:
    late_evening_utc = datetime(2026, 11, 29, 17, 0, tzinfo=UTC)  # 01:00 on the 30th in the city
    issued = issue_result(approved(), issued_at=late_evening_utc, license_token=TOKEN)
    assert issued.license_id == "EL-MKT-0001-20261130-0123456789ABCDEF"
    assert issued.content["issued_at"] == "2026-11-30T01:00:00+08:00"


def test_each_licence_token_gives_another_id_and_hash() -> None:
    a = issue_result(approved(), issued_at=ISSUED_AT, license_token="00000000000000aa")
    b = issue_result(approved(), issued_at=ISSUED_AT, license_token="00000000000000bb")
    assert a.license_id != b.license_id
    assert a.document.sha256 != b.document.sha256


def test_approval_without_e_licence_issues_a_paper_document_of_the_result_kind() -> None:
    decision = approved(item=item(e_license=False, result_kind="certificate", name="执业证书"))
    issued = issue_result(decision, issued_at=ISSUED_AT, license_token=TOKEN)
    assert issued.outcome == "approved"
    assert issued.license_id is None
    assert issued.document.kind == "certificate"
    assert issued.document.title == "执业证书"
    assert issued.document.sha256 == content_sha256(issued.content)
    assert issued.content["kind"] == "certificate"


def test_denial_issues_a_decision_letter_with_reason_and_legal_basis() -> None:
    issued = issue_result(denied(), issued_at=ISSUED_AT, license_token=TOKEN)
    assert issued.outcome == "denied"
    assert issued.license_id is None  # no licence for a denial, even of an e-licence item
    assert issued.document.kind == DECISION_LETTER_KIND
    assert issued.document.sha256 == content_sha256(issued.content)
    assert issued.content["reason"] == "场所不符合要求"
    assert issued.content["legal_basis"] == "《食品经营许可管理办法》第十条"
    assert issued.content["issuing_department"] == "HC01-MKT"


def test_denial_without_a_reason_still_has_the_field() -> None:
    issued = issue_result(denied(reason=None), issued_at=ISSUED_AT, license_token=TOKEN)
    assert issued.content["reason"] == ""


# -- tracking numbers -------------------------------------------------------------------------


def test_s10_check_digit_matches_the_upu_example() -> None:
    assert s10_check_digit("47312482") == 9  # AA473124829GB
    assert is_tracking_number("AA473124829GB")
    assert not is_tracking_number("AA473124828GB")


def test_s10_check_digit_special_remainders() -> None:
    assert s10_check_digit("00000000") == 5  # sum 0: 11 - 0 = 11 -> 5
    assert s10_check_digit("00060000") == 0  # sum 12: 11 - 1 = 10 -> 0
    assert s10_check_digit("00000004") == 5  # sum 28: 11 - 6 = 5
    with pytest.raises(ValueError):
        s10_check_digit("1234567")


def test_tracking_numbers_are_s10_shaped_and_distinct() -> None:
    numbers = [tracking_number(n) for n in (1, 2, 99_999_999, 100_000_000, 100_000_001)]
    assert numbers[0] == f"TA00000001{s10_check_digit('00000001')}CN"
    assert numbers[3].startswith("TB00000000")
    assert all(is_tracking_number(n) and len(n) == 13 for n in numbers)
    assert len(set(numbers)) == len(numbers)
    with pytest.raises(ValueError):
        tracking_number(-1)


# -- delivery plans ---------------------------------------------------------------------------


def test_electronic_is_delivered_and_closed_at_once() -> None:
    plan = plan_delivery(DeliveryMethod.electronic)
    assert plan.on_issue == (CaseResultIssued, CaseDelivered, CaseClosed)
    assert plan.on_pickup == ()
    assert not plan.needs_tracking_number
    assert plan.status_after_issue is CaseStatus.closed


def test_postal_gets_a_tracking_number_then_is_delivered_and_closed() -> None:
    plan = plan_delivery(DeliveryMethod.postal, address="海城市东湖区湖滨路1号")
    assert plan.on_issue == (CaseResultIssued, CaseDelivered, CaseClosed)
    assert plan.needs_tracking_number
    assert plan.status_after_issue is CaseStatus.closed


@pytest.mark.parametrize("address", [None, "", "   "])
def test_postal_without_an_address_cannot_be_delivered(address: str | None) -> None:
    with pytest.raises(UndeliverableError):
        plan_delivery(DeliveryMethod.postal, address=address)


def test_counter_pickup_waits_at_the_office_until_collected() -> None:
    plan = plan_delivery(DeliveryMethod.counter_pickup)
    assert plan.on_issue == (CaseResultIssued,)
    assert plan.status_after_issue is CaseStatus.result_issued
    assert plan.on_pickup == (CaseDelivered, CaseClosed)
    assert plan.status_after_pickup is CaseStatus.closed
    assert not plan.needs_tracking_number


def test_delivery_events_follow_the_plan_in_order() -> None:
    issued = issue_result(approved(), issued_at=ISSUED_AT, license_token=TOKEN)
    facts = DeliveryFacts(
        case_id="C1",
        outcome=issued.outcome,
        document=issued.document,
        method=DeliveryMethod.postal,
        issued_at=ISSUED_AT,
        tracking_number="TA000000015CN",
    )
    plan = plan_delivery(DeliveryMethod.postal, address="somewhere")
    events = delivery_events(plan.on_issue, facts, at=ISSUED_AT)
    assert [type(e) for e in events] == [CaseResultIssued, CaseDelivered, CaseClosed]
    assert events[0] == CaseResultIssued(case_id="C1", result=issued.document, issued_at=ISSUED_AT)
    assert events[1] == CaseDelivered(
        case_id="C1",
        method=DeliveryMethod.postal,
        delivered_at=ISSUED_AT,
        tracking_number="TA000000015CN",
    )
    assert events[2] == CaseClosed(case_id="C1", outcome="approved", closed_at=ISSUED_AT)


def test_pickup_events_name_the_office_and_close_a_denial_as_denied() -> None:
    issued = issue_result(denied(), issued_at=ISSUED_AT, license_token=TOKEN)
    picked_up = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)
    facts = DeliveryFacts(
        case_id="C2",
        outcome=issued.outcome,
        document=issued.document,
        method=DeliveryMethod.counter_pickup,
        issued_at=ISSUED_AT,
        office_code="HC01-DC",
    )
    events = delivery_events(
        plan_delivery(DeliveryMethod.counter_pickup).on_pickup, facts, at=picked_up
    )
    delivered, closed = events
    assert isinstance(delivered, CaseDelivered) and delivered.office_code == "HC01-DC"
    assert delivered.delivered_at == picked_up
    assert isinstance(closed, CaseClosed) and closed.outcome == "denied"


# -- the licence library (DESIGN.md §7) --------------------------------------------------------


def test_an_e_licence_of_a_typed_item_goes_into_the_library_keyed_by_its_id() -> None:
    decision = approved(
        item=item(license_type="FOOD-LICENCE"), applicant_id_number=" 91310000ma1fl8tq4x "
    )
    issued = issue_result(decision, issued_at=ISSUED_AT, license_token=TOKEN)
    entry = license_issued(decision, issued, issued_at=ISSUED_AT)
    assert entry is not None
    assert entry.license_id == issued.license_id
    assert entry.license_type == "FOOD-LICENCE"
    assert entry.holder_id_number == "91310000MA1FL8TQ4X"  # one holder however it was typed
    assert (entry.case_id, entry.item_code) == (decision.case_id, "MKT-0001")
    assert entry.sha256 == issued.document.sha256 and entry.issued_at == ISSUED_AT


@pytest.mark.parametrize(
    "decision",
    [
        approved(),  # an e-licence of no library type
        approved(item=item(e_license=False, license_type="FOOD-LICENCE")),  # paper
        denied(item=item(license_type="FOOD-LICENCE")),  # a decision letter
    ],
)
def test_only_typed_e_licences_go_into_the_library(decision: CaseApproved | CaseDenied) -> None:
    issued = issue_result(decision, issued_at=ISSUED_AT, license_token=TOKEN)
    assert license_issued(decision, issued, issued_at=ISSUED_AT) is None


def test_a_revoked_decision_revokes_its_licence_with_the_reason_and_time() -> None:
    revoked = CaseRevoked(
        case_id="HC-1", department="HC01-MKT", reason="commitment_breached", revoked_at=ISSUED_AT
    )
    event = license_revoked(revoked, license_id="EL-1")
    assert (event.license_id, event.case_id, event.reason) == ("EL-1", "HC-1", revoked.reason)
    assert event.revoked_at == ISSUED_AT


@pytest.mark.parametrize(
    ("genuine", "revoked", "status"),
    [
        (True, False, LicenseStatus.valid),
        (True, True, LicenseStatus.revoked),
        (False, False, LicenseStatus.invalid),
        (False, True, LicenseStatus.invalid),  # not the document on record, whatever became of it
    ],
)
def test_verification_status(genuine: bool, revoked: bool, status: LicenseStatus) -> None:
    assert license_status(genuine=genuine, revoked=revoked) is status
