"""Every routing outcome names the facts it was decided on (`inputs`), explains itself in
Chinese and English, and carries the intake office's handover on to approval."""

import re
from datetime import UTC, date, datetime
from typing import Any

import pytest

from contracts.common import Channel, Handover
from contracts.events import CaseRouted, CaseRouteFailed, CaseSubmitted
from services.policy.routing_rules import RouteOutcome, route_case
from services.routing.handlers import NO_CATALOG, effect_of
from tests.unit.catalog_data import TODAY, application, index

pytestmark = pytest.mark.unit

INDEX = index()
ALWAYS = {
    "item_code",
    "catalog_version",
    "submitted_on",
    "channel",
    "intake_office",
    "applicant_category",
    "applicant_division",
}
ITEM = {
    "item_mode",
    "item_category",
    "delegated_to",
    "owner",
    "owner_line",
    "effective_from",
    "effective_to",
}
JURISDICTION = {"applicant_district", "applicant_street"}
OFFICE = {"intake_office_kind", "intake_office_district"}


def route(item: str, on: date = TODAY, **kwargs: Any) -> RouteOutcome:
    return route_case(
        INDEX,
        catalog_version=4,
        application=application(item, **kwargs),
        submitted_on=on,
    )


def bilingual(text: str) -> bool:
    """Chinese, then " / ", then English."""
    zh, sep, en = text.partition(" / ")
    return bool(sep and re.search(r"[\u4e00-\u9fff]", zh) and re.search(r"[A-Za-z]{3}", en))


# --------------------------------------------------------------------------- each path


def test_inputs_of_a_delegated_route() -> None:
    outcome = route("DEL-D", office="T1-DC", division="T21")
    assert outcome.route is not None
    assert outcome.route.inputs == outcome.inputs
    assert outcome.route.inputs == {
        "item_code": "DEL-D",
        "catalog_version": "4",
        "submitted_on": "2026-06-15",
        "channel": "counter",
        "intake_office": "T1-DC",
        "applicant_category": "enterprise",
        "applicant_division": "T21",
        "item_mode": "delegated",
        "item_category": "enterprise",
        "delegated_to": "district",
        "owner": "M-MKT",
        "owner_line": "market",
        "effective_from": "2026-01-01",
        "effective_to": None,
        "applicant_district": "T2",
        "applicant_street": "T21",
        "intake_office_kind": "district_center",
        "intake_office_district": "T1",
        "receiving_division": "T2",
    }


def test_inputs_of_a_street_delegated_route() -> None:
    outcome = route("DEL-S", office="T12-SC", division="T11")
    assert outcome.route is not None
    inputs = outcome.route.inputs
    assert (inputs["delegated_to"], inputs["receiving_division"]) == ("street", "T11")
    assert (inputs["owner"], inputs["owner_line"]) == ("M-SOC", "social")
    assert (inputs["intake_office_kind"], inputs["intake_office_district"]) == (
        "street_center",
        "T1",
    )


def test_inputs_of_an_online_route_on_the_online_channel() -> None:
    outcome = route("ONL-E", division="T2")
    assert outcome.route is not None
    inputs = outcome.route.inputs
    assert set(inputs) == ALWAYS | ITEM | JURISDICTION  # no office on the online channel
    assert (inputs["channel"], inputs["intake_office"]) == ("online", None)
    assert (inputs["item_mode"], inputs["delegated_to"]) == ("online", None)
    assert (inputs["applicant_district"], inputs["applicant_street"]) == ("T2", None)


def test_inputs_of_an_entrusted_route() -> None:
    outcome = route("ENT-I", office="T12-SC", division="T12")
    assert outcome.route is not None
    inputs = outcome.route.inputs
    assert set(inputs) == ALWAYS | ITEM | JURISDICTION | OFFICE
    assert (inputs["item_mode"], inputs["owner"], inputs["owner_line"]) == (
        "entrusted",
        "M-HOU",
        "housing",
    )
    assert inputs["intake_office_district"] == "T1"


def test_inputs_of_a_municipal_route_at_the_municipal_center() -> None:
    outcome = route("MUN-E", office="T-MC", division="T21")
    assert outcome.route is not None
    inputs = outcome.route.inputs
    assert set(inputs) == ALWAYS | ITEM | JURISDICTION | OFFICE
    # The municipal center lies in no district.
    assert (inputs["intake_office_kind"], inputs["intake_office_district"]) == (
        "municipal_center",
        None,
    )


@pytest.mark.parametrize(
    ("item", "kwargs", "rule", "keys"),
    [
        ("NOPE", {"office": "T1-DC"}, "R1-unknown-item", ALWAYS),
        ("FUT", {}, "R1-item-not-effective", ALWAYS | ITEM),
        ("DEL-D", {"office": "T1-DC", "division": "ZZ1"}, "R2-out-of-jurisdiction", ALWAYS | ITEM),
        (
            "DEL-D",
            {"office": "T9-DC", "division": "T1"},
            "R3-unknown-office",
            ALWAYS | ITEM | JURISDICTION,
        ),
        (
            "DEL-D",
            {"channel": Channel.online, "division": "T1"},
            "R3-office-not-allowed",
            ALWAYS | ITEM | JURISDICTION,
        ),
        (
            "DEL-D",
            {"office": "T11-SC", "division": "T11"},
            "R3-office-not-allowed",
            ALWAYS | ITEM | JURISDICTION | OFFICE,
        ),
        (
            "DEL-D",
            {"office": "T1-DC", "division": "T3"},
            "R5-no-receiving-department",
            ALWAYS | ITEM | JURISDICTION | OFFICE | {"receiving_division"},
        ),
        (
            "DEL-S",
            {"office": "T11-SC", "division": "T1"},
            "R5-no-receiving-department",
            ALWAYS | ITEM | JURISDICTION | OFFICE | {"receiving_division"},
        ),
    ],
)
def test_inputs_of_each_failure_are_the_facts_resolved_so_far(
    item: str, kwargs: dict[str, Any], rule: str, keys: set[str]
) -> None:
    outcome = route(item, **kwargs)
    assert outcome.failure is not None and outcome.rule == rule
    assert set(outcome.inputs) == keys
    assert outcome.inputs["item_code"] == item and outcome.inputs["catalog_version"] == "4"
    assert bilingual(outcome.failure.explanation), outcome.failure.explanation


def test_inputs_name_the_submission_date_and_the_effective_window() -> None:
    outcome = route("OLD", on=date(2026, 1, 1))
    assert outcome.rule == "R1-item-not-effective"
    assert outcome.inputs["submitted_on"] == "2026-01-01"
    assert (outcome.inputs["effective_from"], outcome.inputs["effective_to"]) == (
        "2020-01-01",
        "2025-12-31",
    )


def test_a_street_delegated_item_for_an_applicant_known_by_district() -> None:
    outcome = route("DEL-S", office="T11-SC", division="T1")
    assert outcome.inputs["receiving_division"] is None
    assert (outcome.inputs["applicant_district"], outcome.inputs["applicant_street"]) == (
        "T1",
        None,
    )


# --------------------------------------------------------------------------- explanations


@pytest.mark.parametrize(
    ("item", "kwargs"),
    [
        ("ONL-E", {"division": "T2"}),
        ("ONL-I", {"office": "T2-DC", "division": "T11"}),
        ("DEL-D", {"office": "T1-DC", "division": "T12"}),
        ("DEL-D", {"office": "T1-DC", "division": "T2"}),  # same-city
        ("DEL-S", {"office": "T11-SC", "division": "T11"}),
        ("ENT-I", {"office": "T12-SC", "division": "T12"}),
        ("ENT-E", {"office": "T2-DC", "division": "T1"}),
        ("MUN-E", {"office": "T-MC", "division": "T21"}),
    ],
)
def test_every_route_explains_itself_in_chinese_and_english(
    item: str, kwargs: dict[str, Any]
) -> None:
    outcome = route(item, **kwargs)
    assert outcome.route is not None
    assert bilingual(outcome.route.explanation), outcome.route.explanation


def test_no_catalog_failure_is_bilingual() -> None:
    assert bilingual(NO_CATALOG.explanation)


# --------------------------------------------------------------------------- effects

HANDOVER = Handover(
    office_code="T12-SC",
    signed_at=datetime(2026, 6, 15, 9, 0, tzinfo=UTC),
    digest="a" * 64,
    algorithm="ed25519",
    key_id="T12-SC-2026",
    signature="c2lnbmF0dXJl",
)


def submission(item: str, handover: Handover | None = HANDOVER, **kwargs: Any) -> CaseSubmitted:
    return CaseSubmitted(
        case_id="C-9",
        application=application(item, **kwargs),
        submitted_at=datetime(2026, 6, 15, 2, 0, tzinfo=UTC),
        handover=handover,
    )


def test_the_handover_is_carried_unchanged_to_the_routed_event() -> None:
    case = submission("ENT-I", office="T12-SC", division="T12")
    effect = effect_of(case, route("ENT-I", office="T12-SC", division="T12"))
    assert isinstance(effect.event, CaseRouted)
    assert isinstance(effect.event, CaseRouted) and effect.handled_by == "M-HOU"
    assert effect.event.handover == HANDOVER
    assert effect.event.route.inputs == effect.values["inputs"]
    assert effect.values["status"] == "routed" and effect.values["rule"] == "R6-entrusted"
    assert (
        effect_of(
            submission("ENT-I", None, office="T12-SC", division="T12"),
            route("ENT-I", office="T12-SC", division="T12"),
        ).event.model_dump()["handover"]
        is None
    )


def test_a_failure_effect_keeps_its_inputs_for_triage() -> None:
    outcome = route("NOPE", office="T1-DC")
    effect = effect_of(submission("NOPE", office="T1-DC"), outcome)
    assert isinstance(effect.event, CaseRouteFailed)
    assert isinstance(effect.event, CaseRouteFailed) and effect.handled_by is None
    assert effect.values["status"] == "route_failed"
    assert effect.values["inputs"] == dict(outcome.inputs)
    assert effect.event.catalog_version == 4 and effect.event.rule == "R1-unknown-item"


def test_no_catalog_effect() -> None:
    effect = effect_of(submission("NOPE", office="T1-DC"), None)
    assert isinstance(effect.event, CaseRouteFailed)
    assert effect.event.failure == NO_CATALOG and effect.event.catalog_version is None
    assert effect.values["rule"] == "R0-no-catalog"
