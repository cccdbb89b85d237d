import pytest

from contracts.catalog import OfficeKind
from contracts.common import Channel, Level
from services.policy.intake_rules import (
    MAX_SUGGESTED_OFFICES,
    OfficeDecision,
    effective_intake_levels,
    office_allowed,
)
from tests.unit.catalog_data import base_catalog, index

pytestmark = pytest.mark.unit

INDEX = index()


def decide(
    item: str,
    office: str | None,
    channel: Channel = Channel.counter,
    division: str | None = None,
) -> OfficeDecision:
    return office_allowed(
        INDEX, INDEX.items[item], channel=channel, office_code=office, applicant_division=division
    )


@pytest.mark.parametrize(
    ("item", "levels"),
    [
        ("DEL-D", {Level.district}),  # enterprise default
        ("DEL-S", {Level.street}),  # individual default
        ("ENT-I", {Level.street, Level.district}),  # explicit
        ("MUN-E", set()),  # municipal: municipal center only
        ("MUN-X", {Level.district}),  # explicit wins, even on a municipal item
    ],
)
def test_effective_intake_levels(item: str, levels: set[Level]) -> None:
    assert effective_intake_levels(INDEX.items[item]) == levels


@pytest.mark.parametrize(
    ("item", "office", "allowed"),
    [
        ("DEL-D", "T1-DC", True),
        ("DEL-D", "T2-DC", True),  # any district center: taken anywhere, decided where competent
        ("DEL-D", "T11-SC", False),
        ("DEL-D", "T-MC", True),  # the municipal center takes any item
        ("DEL-S", "T21-SC", True),
        ("DEL-S", "T1-DC", False),
        ("ENT-I", "T1-DC", True),
        ("ENT-I", "T12-SC", True),
        ("MUN-E", "T-MC", True),
        ("MUN-E", "T1-DC", False),
        ("MUN-E", "T11-SC", False),
        ("ONL-E", "T11-SC", True),  # assisted online at any counter
        ("ONL-I", "T2-DC", True),
    ],
)
def test_counter_offices(item: str, office: str, allowed: bool) -> None:
    decision = decide(item, office)
    assert decision.allowed is allowed
    if allowed:
        assert decision.code is None and decision.office is not None
        assert decision.office.code == office
    else:
        assert decision.code == "office_not_allowed" and decision.field == "office_code"


def test_online_channel() -> None:
    ok = decide("ONL-E", None, Channel.online)
    assert ok.allowed and ok.office is None
    # An office code sent along on the online channel is not an intake office.
    assert decide("ONL-E", "T1-DC", Channel.online).office is None
    refused = decide("ENT-I", None, Channel.online, division="T21")
    assert (refused.allowed, refused.code, refused.field) == (
        False,
        "office_not_allowed",
        "channel",
    )
    assert refused.guidance is not None and refused.guidance.online is False
    assert refused.guidance.offices[0] == "T21-SC"


def test_counter_without_office() -> None:
    decision = decide("DEL-D", None)
    assert (decision.allowed, decision.code, decision.field) == (
        False,
        "unknown_office",
        "office_code",
    )
    assert "office_code" in decision.message


def test_unknown_office_has_guidance() -> None:
    decision = decide("DEL-D", "T9-DC", division="T2")
    assert decision.code == "unknown_office" and "T9-DC" in decision.message
    assert decision.guidance is not None and decision.guidance.offices[0] == "T2-DC"


def test_refusal_guidance_prefers_the_applicants_district() -> None:
    decision = decide("DEL-D", "T12-SC", division="T12")
    assert decision.guidance is not None
    g = decision.guidance
    assert g.levels == (Level.municipal, Level.district)
    assert g.office_kinds == (OfficeKind.municipal_center, OfficeKind.district_center)
    assert g.offices == ("T1-DC", "T-MC", "T2-DC")
    assert g.as_dict() == {
        "levels": ["municipal", "district"],
        "office_kinds": ["municipal_center", "district_center"],
        "offices": ["T1-DC", "T-MC", "T2-DC"],
        "online": False,
    }
    assert "T1-DC" in decision.message and "区级" in decision.message


def test_refusal_guidance_prefers_the_applicants_street_then_district() -> None:
    decision = decide("DEL-S", "T1-DC", division="T12")
    assert decision.guidance is not None
    assert decision.guidance.offices == ("T12-SC", "T11-SC", "T-MC", "T21-SC")


def test_refusal_guidance_without_applicant_division() -> None:
    decision = decide("DEL-S", "T1-DC")
    assert decision.guidance is not None
    assert decision.guidance.offices == ("T-MC", "T11-SC", "T12-SC", "T21-SC")


def test_refusal_guidance_is_capped() -> None:
    raw = base_catalog()
    raw["districts"][2]["streets"] = [{"code": f"T3{i:02d}"} for i in range(30)]
    raw["offices"] += [
        {"code": f"T3{i:02d}-SC", "kind": "street_center", "division": f"T3{i:02d}"}
        for i in range(30)
    ]
    idx = index(raw)
    decision = office_allowed(
        idx,
        idx.items["DEL-S"],
        channel=Channel.counter,
        office_code="T1-DC",
        applicant_division="T305",
    )
    assert decision.guidance is not None
    assert len(decision.guidance.offices) == MAX_SUGGESTED_OFFICES
    assert decision.guidance.offices[0] == "T305-SC"
