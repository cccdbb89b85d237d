from datetime import date

import pytest

from contracts.common import Category, Channel, Level, Path, RouteLevel
from services.policy.routing_rules import (
    RULES,
    RouteOutcome,
    Routing,
    applicant_region,
    jurisdiction,
    r4_online,
    r5_delegated,
    r6_entrusted,
    r7_municipal,
    route_case,
)
from tests.unit.catalog_data import TODAY, application, base_catalog, index, partner_catalog

pytestmark = pytest.mark.unit

INDEX = index()


def route(item: str, on: date = TODAY, version: int = 7, **kwargs) -> RouteOutcome:
    return route_case(
        INDEX, catalog_version=version, application=application(item, **kwargs), submitted_on=on
    )


def failed(outcome: RouteOutcome, rule: str, code: str) -> None:
    assert outcome.route is None and outcome.failure is not None, outcome
    assert (outcome.rule, outcome.failure.code) == (rule, code)
    assert outcome.failure.explanation
    assert not outcome.ok


# --------------------------------------------------------------------------- R1


def test_r1_unknown_item() -> None:
    outcome = route("NOPE", office="T-MC")
    failed(outcome, "R1-unknown-item", "unknown_item")
    assert outcome.item is None and outcome.catalog_version == 7


@pytest.mark.parametrize(
    ("item", "on"),
    [("FUT", TODAY), ("FUT", date(2029, 12, 31)), ("OLD", date(2026, 1, 1)), ("OLD", TODAY)],
)
def test_r1_item_not_effective(item: str, on: date) -> None:
    outcome = route(item, on=on)
    failed(outcome, "R1-item-not-effective", "item_not_effective")
    assert outcome.item is not None and outcome.item.code == item


@pytest.mark.parametrize(("item", "on"), [("FUT", date(2030, 1, 1)), ("OLD", date(2025, 12, 31))])
def test_r1_effective_bounds_are_inclusive(item: str, on: date) -> None:
    assert route(item, on=on).rule == "R4-online"


def test_r1_wins_over_later_rules() -> None:
    # Out of the city and at an unknown office too: the item check comes first.
    failed(route("NOPE", office="X-1", division="ZZ9"), "R1-unknown-item", "unknown_item")
    failed(
        route("OLD", office="X-1", division="ZZ9"), "R1-item-not-effective", "item_not_effective"
    )


# --------------------------------------------------------------------------- R2


def test_r2_out_of_jurisdiction() -> None:
    failed(
        route("DEL-D", office="T1-DC", division="ZZ01"),
        "R2-out-of-jurisdiction",
        "out_of_jurisdiction",
    )


def test_r2_wins_over_office_and_delegation() -> None:
    failed(
        route("DEL-D", office="T11-SC", division="ZZ01"),
        "R2-out-of-jurisdiction",
        "out_of_jurisdiction",
    )
    failed(
        route("DEL-D", office="NOPE", division="ZZ01"),
        "R2-out-of-jurisdiction",
        "out_of_jurisdiction",
    )


@pytest.mark.parametrize("division", ["T", "T1", "T11"])
def test_r2_any_division_of_the_city_is_in_jurisdiction(division: str) -> None:
    assert route("ONL-I", division=division).rule == "R4-online"


def test_jurisdiction_of_a_street_implies_its_district() -> None:
    where = jurisdiction(INDEX, "T12")
    assert where is not None
    assert (where.level, where.district, where.street) == (Level.street, "T1", "T12")
    where = jurisdiction(INDEX, "T2")
    assert where is not None and (where.district, where.street) == ("T2", None)
    where = jurisdiction(INDEX, "T")
    assert where is not None and (where.level, where.district) == (Level.municipal, None)
    assert jurisdiction(INDEX, "T9") is None


# --------------------------------------------------------------------------- R3


def test_r3_office_not_allowed() -> None:
    outcome = route("DEL-D", office="T11-SC", division="T11")
    failed(outcome, "R3-office-not-allowed", "office_not_allowed")
    assert outcome.failure is not None and "T1-DC" in outcome.failure.explanation


def test_r3_online_channel_takes_only_online_items() -> None:
    failed(
        route("DEL-D", channel=Channel.online, division="T1"),
        "R3-office-not-allowed",
        "office_not_allowed",
    )


def test_r3_unknown_office() -> None:
    failed(route("DEL-D", office="T9-DC", division="T1"), "R3-unknown-office", "unknown_office")
    failed(
        route("DEL-D", channel=Channel.counter, division="T1"),
        "R3-unknown-office",
        "unknown_office",
    )


def test_r3_wins_over_no_receiving_department() -> None:
    # T3 has no market department, but the street office is checked first.
    failed(
        route("DEL-D", office="T11-SC", division="T3"),
        "R3-office-not-allowed",
        "office_not_allowed",
    )


def test_r3_municipal_item_only_at_the_municipal_center_by_default() -> None:
    failed(
        route("MUN-E", office="T1-DC", division="T1"), "R3-office-not-allowed", "office_not_allowed"
    )
    assert route("MUN-X", office="T1-DC", division="T1").rule == "R7-municipal"


# --------------------------------------------------------------------------- R4


def test_r4_online_channel() -> None:
    outcome = route("ONL-E", division="T2")
    assert outcome.ok and outcome.route is not None
    r = outcome.route
    assert (r.path, r.level, r.handled_by, r.rule) == (
        Path.online,
        RouteLevel.municipal,
        "M-MKT",
        "R4-online",
    )
    assert r.same_city is False and r.intake_office is None and r.entrusted_receiver is None
    assert (r.time_limit_days, r.instant, r.catalog_version) == (3, False, 7)


@pytest.mark.parametrize("office", ["T11-SC", "T2-DC", "T-MC"])
def test_r4_online_item_is_taken_at_any_counter(office: str) -> None:
    outcome = route("ONL-I", office=office, division="T11")
    assert outcome.route is not None and outcome.route.rule == "R4-online"
    assert outcome.route.intake_office == office and outcome.route.instant is True
    assert outcome.route.same_city is False


# --------------------------------------------------------------------------- R5


def test_r5_delegated_to_the_applicants_district() -> None:
    outcome = route("DEL-D", office="T1-DC", division="T12")
    assert outcome.route is not None
    r = outcome.route
    assert (r.path, r.level, r.handled_by, r.rule) == (
        Path.delegated,
        RouteLevel.district,
        "T1-MKT",
        "R5-delegated",
    )
    assert r.same_city is False and r.time_limit_days == 5 and r.intake_office == "T1-DC"
    assert "下放" in r.explanation and "Delegated" in r.explanation


def test_r5_enterprise_known_by_district() -> None:
    outcome = route("DEL-D", office="T2-DC", division="T2")
    assert outcome.route is not None and outcome.route.handled_by == "T2-MKT"


def test_r5_same_city_when_taken_in_another_district() -> None:
    outcome = route("DEL-D", office="T1-DC", division="T2")
    assert outcome.route is not None
    assert outcome.route.handled_by == "T2-MKT" and outcome.route.same_city is True
    assert "同城通办" in outcome.route.explanation


def test_r5_not_same_city_at_the_municipal_center() -> None:
    outcome = route("DEL-D", office="T-MC", division="T2")
    assert outcome.route is not None
    assert outcome.route.handled_by == "T2-MKT" and outcome.route.same_city is False


def test_r5_delegated_to_the_applicants_street() -> None:
    outcome = route("DEL-S", office="T11-SC", division="T11")
    assert outcome.route is not None
    r = outcome.route
    assert (r.level, r.handled_by, r.same_city, r.instant) == (
        RouteLevel.street,
        "T11-SOC",
        False,
        True,
    )


def test_r5_street_same_city_only_across_districts() -> None:
    other_district = route("DEL-S", office="T21-SC", division="T11")
    same_district = route("DEL-S", office="T12-SC", division="T11")
    assert other_district.route is not None and other_district.route.same_city is True
    assert same_district.route is not None and same_district.route.same_city is False
    assert other_district.route.handled_by == same_district.route.handled_by == "T11-SOC"


@pytest.mark.parametrize(
    ("item", "office", "division"),
    [
        ("DEL-D", "T1-DC", "T3"),  # no market department in T3
        ("DEL-D", "T1-DC", "T31"),  # ... nor for a street of T3
        ("DEL-D", "T1-DC", "T"),  # known only by the city
        ("DEL-S", "T12-SC", "T12"),  # no social street unit in T12
        ("DEL-S", "T11-SC", "T1"),  # individual known only by district: street item
    ],
)
def test_r5_no_receiving_department(item: str, office: str, division: str) -> None:
    outcome = route(item, office=office, division=division)
    failed(outcome, "R5-no-receiving-department", "no_receiving_department")
    assert outcome.item is not None and outcome.item.code == item


# --------------------------------------------------------------------------- R6, R7


@pytest.mark.parametrize("office", ["T12-SC", "T2-DC", "T-MC"])
def test_r6_entrusted(office: str) -> None:
    outcome = route("ENT-I", office=office, division="T12")
    assert outcome.route is not None
    r = outcome.route
    assert (r.path, r.level, r.handled_by, r.rule) == (
        Path.entrusted,
        RouteLevel.municipal,
        "M-HOU",
        "R6-entrusted",
    )
    assert r.entrusted_receiver == office == r.intake_office and r.same_city is False
    assert r.time_limit_days == 20


def test_r6_entrusted_enterprise_default_intake_is_district() -> None:
    assert route("ENT-E", office="T2-DC", division="T1").rule == "R6-entrusted"
    failed(
        route("ENT-E", office="T21-SC", division="T2"),
        "R3-office-not-allowed",
        "office_not_allowed",
    )


def test_r7_municipal() -> None:
    outcome = route("MUN-E", office="T-MC", division="T21")
    assert outcome.route is not None
    r = outcome.route
    assert (r.path, r.level, r.handled_by, r.rule) == (
        Path.municipal,
        RouteLevel.municipal,
        "M-HOU",
        "R7-municipal",
    )
    assert r.same_city is False and r.entrusted_receiver is None


# --------------------------------------------------------------------------- outcome


def test_item_snapshot_on_success() -> None:
    outcome = route("DEL-D", office="T1-DC", division="T11")
    assert outcome.item is not None
    assert outcome.item.model_dump() == {
        "code": "DEL-D",
        "name": "下放区级企业事项",
        "instant": False,
        "time_limit_days": 5,
        "result_kind": "licence",
        "e_license": True,
        "license_type": None,
        "defer_days": 5,
        "verify_days": 20,
    }


def test_default_result_kind() -> None:
    outcome = route("ENT-E", office="T1-DC", division="T1")
    assert outcome.item is not None
    assert (outcome.item.result_kind, outcome.item.e_license) == ("decision_letter", False)


def test_routing_follows_the_catalog_data_not_names() -> None:
    # Same rules on a changed catalog: give T3 a market department; the case goes there.
    raw = base_catalog()
    raw["departments"].append(
        {"code": "Z", "name": "", "line": "market", "level": "district", "division": "T3"}
    )
    outcome = route_case(
        index(raw),
        catalog_version=2,
        application=application("DEL-D", office="T1-DC", division="T31"),
        submitted_on=TODAY,
    )
    assert outcome.route is not None
    assert (outcome.route.handled_by, outcome.route.same_city) == ("Z", True)
    assert outcome.route.catalog_version == 2


# --------------------------------------------------------------------------- the rule table


def test_the_rule_table_is_r1_to_r7_in_order() -> None:
    assert [rule.__name__.split("_")[0] for rule in RULES] == [f"r{n}" for n in range(1, 8)]


PATH_RULES = {
    "R4-online": r4_online,
    "R5-delegated": r5_delegated,
    "R6-entrusted": r6_entrusted,
    "R7-municipal": r7_municipal,
}


@pytest.mark.parametrize(
    ("item", "office", "decided_by"),
    [
        ("ONL-I", "T11-SC", "R4-online"),
        ("DEL-D", "T1-DC", "R5-delegated"),
        ("ENT-I", "T12-SC", "R6-entrusted"),
        ("MUN-E", "T-MC", "R7-municipal"),
    ],
)
def test_each_path_rule_decides_its_own_mode_and_passes_the_others_on(
    item: str, office: str, decided_by: str
) -> None:
    """After R1-R3 resolve the facts, the path rules before the deciding one pass the case on:
    one rule function, one mode."""
    case = Routing(
        index=INDEX,
        catalog_version=7,
        application=application(item, office=office, division="T11"),
        submitted_on=TODAY,
        inputs={},
    )
    assert [rule(case) for rule in RULES[:3]] == [None, None, None]
    rules = list(PATH_RULES.items())
    for name, rule in rules[: list(PATH_RULES).index(decided_by)]:
        assert rule(case) is None, name
    outcome = PATH_RULES[decided_by](case)
    assert outcome is not None and outcome.rule == decided_by and outcome.ok


# --------------------------------------------------------------------------- across regions (§9)


PARTNERS = {"P": (3, index(partner_catalog()))}


def route_across(item: str, **kwargs) -> RouteOutcome:
    return route_case(
        INDEX,
        catalog_version=7,
        application=application(item, **kwargs),
        submitted_on=TODAY,
        partners=PARTNERS,
    )


def test_applicant_region_tries_this_city_first_then_the_partners() -> None:
    assert applicant_region(INDEX, PARTNERS, "T11") is None
    assert applicant_region(INDEX, PARTNERS, "P11") == "P"
    assert applicant_region(INDEX, PARTNERS, "P") == "P"
    assert applicant_region(INDEX, PARTNERS, "ZZ01") is None


@pytest.mark.parametrize(
    ("office", "division"), [("T1-DC", "P11"), ("T12-SC", "P1"), ("T-MC", "P")]
)
def test_r2_cross_region_forwards_to_the_partner(office: str, division: str) -> None:
    outcome = route_across("XR-E", office=office, category=Category.enterprise, division=division)
    assert outcome.ok and outcome.route is not None
    r = outcome.route
    assert (r.path, r.level, r.handled_by, r.rule, r.same_city) == (
        Path.cross_region,
        RouteLevel.partner,
        "P",
        "R2-cross-region",
        False,
    )
    # the partner's catalog version and time limit; this city's intake office
    assert (r.catalog_version, outcome.catalog_version, r.time_limit_days) == (3, 3, 12)
    assert r.intake_office == office and r.entrusted_receiver is None
    assert "跨省通办" in r.explanation and "Across regions" in r.explanation
    assert outcome.item is not None and outcome.item.code == "XR-E"
    assert r.inputs["partner_city"] == "P" and r.inputs["partner_catalog_version"] == "3"
    assert r.inputs["catalog_version"] == "7" and r.inputs["item_scope"] == "cross_region"


def test_a_code_in_both_catalogs_is_read_in_the_applicants_region() -> None:
    # DEL-D is delegated in T and cross_region (municipal, 9 days) in P.
    local = route_across("DEL-D", office="T1-DC", division="T11")
    assert local.route is not None and local.route.rule == "R5-delegated"
    assert (local.route.time_limit_days, local.catalog_version) == (5, 7)
    across = route_across("DEL-D", office="T1-DC", division="P11")
    assert across.route is not None and across.route.rule == "R2-cross-region"
    assert (across.route.time_limit_days, across.route.handled_by) == (9, "P")
    assert across.item is not None and across.item.name == "伙伴同码事项"


def test_a_partner_item_not_cross_region_is_out_of_jurisdiction() -> None:
    outcome = route_across("LOC-E", office="T1-DC", division="P11")
    failed(outcome, "R2-out-of-jurisdiction", "out_of_jurisdiction")
    assert outcome.failure is not None and "P" in outcome.failure.explanation
    assert "online channel" in outcome.failure.explanation
    assert outcome.catalog_version == 3 and outcome.inputs["item_scope"] == "city"


def test_a_partner_item_unknown_or_not_in_force_fails_r1_naming_the_partner() -> None:
    # ONL-E is this city's item, not the partner's: read in P's catalog it is unknown.
    for item, rule, code in [
        ("ONL-E", "R1-unknown-item", "unknown_item"),
        ("NOPE", "R1-unknown-item", "unknown_item"),
        ("XR-F", "R1-item-not-effective", "item_not_effective"),
    ]:
        outcome = route_across(item, office="T1-DC", division="P11")
        failed(outcome, rule, code)
        assert outcome.failure is not None and "partner region P" in outcome.failure.explanation
        assert "伙伴市（P）" in outcome.failure.explanation
        assert outcome.catalog_version == 3 and outcome.inputs["partner_city"] == "P"


def test_a_division_in_no_known_region_is_out_of_jurisdiction_as_before() -> None:
    outcome = route_across("DEL-D", office="T1-DC", division="ZZ01")
    failed(outcome, "R2-out-of-jurisdiction", "out_of_jurisdiction")
    without = route("DEL-D", office="T1-DC", division="ZZ01")
    assert outcome.failure is not None and without.failure is not None
    assert outcome.failure.explanation == without.failure.explanation
    assert "partner_city" not in outcome.inputs and outcome.catalog_version == 7
    failed(route_across("NOPE", division="ZZ01"), "R1-unknown-item", "unknown_item")


def test_cross_region_is_taken_only_at_a_counter_of_this_city() -> None:
    failed(
        route_across("XR-E", channel=Channel.online, division="P11"),
        "R3-office-not-allowed",
        "office_not_allowed",
    )
    failed(
        route_across("XR-E", office="P-MC", division="P11"), "R3-unknown-office", "unknown_office"
    )
    failed(
        route_across("XR-E", channel=Channel.counter, division="P11"),
        "R3-unknown-office",
        "unknown_office",
    )


def test_without_partners_a_partner_division_is_out_of_jurisdiction() -> None:
    failed(route("XR-E", office="T1-DC", division="P11"), "R1-unknown-item", "unknown_item")
    failed(
        route("DEL-D", office="T1-DC", division="P11"),
        "R2-out-of-jurisdiction",
        "out_of_jurisdiction",
    )
