"""Routing across regions (DESIGN.md §9), pure: the effect of a cross_region route (routed and
forwarded, or a failure when unsigned), which case events go to which partner, and what a
partner's refusal does."""

from datetime import UTC, datetime
from typing import Any

import pytest

from contracts.common import Path
from contracts.events import (
    CASE_TOPICS,
    EVENT_TYPES,
    CaseAccepted,
    CaseAdoptionRefused,
    CaseClosed,
    CaseDelivered,
    CaseForwarded,
    CaseRated,
    CaseRouted,
    CaseRouteFailed,
    CaseSubmitted,
    CaseSupplemented,
    CaseWithdrawn,
)
from services.policy.routing_rules import route_case
from services.routing.domain.xregion import (
    ORIGIN_STEPS,
    PartnerCase,
    Role,
    refusal_applies,
    refusal_failure,
    relay_to,
)
from services.routing.handlers import effect_of
from tests.unit.catalog_data import TODAY, application, index
from tests.unit.test_routing_inputs import HANDOVER
from tests.unit.test_routing_rules import PARTNERS

pytestmark = pytest.mark.unit

NOW = datetime(2026, 6, 15, 3, 0, tzinfo=UTC)


def submitted(item: str, *, signed: bool = True, **kwargs: Any) -> CaseSubmitted:
    return CaseSubmitted(
        case_id="T-XR-1",
        application=application(item, **kwargs),
        submitted_at=datetime(2026, 6, 15, 2, 0, tzinfo=UTC),
        handover=HANDOVER if signed else None,
    )


def routed_across(case: CaseSubmitted) -> Any:
    return route_case(
        index(),
        catalog_version=4,
        application=case.application,
        submitted_on=TODAY,
        partners=PARTNERS,
    )


# --------------------------------------------------------------------------- the effect


def test_a_cross_region_route_is_routed_and_forwarded_to_the_partner() -> None:
    case = submitted("XR-E", office="T12-SC", division="P11")
    effect = effect_of(case, routed_across(case), own_city="T", now=NOW)
    assert isinstance(effect.event, CaseRouted)
    assert effect.event.route.path is Path.cross_region and effect.handled_by == "P"
    assert effect.values["status"] == "routed" and effect.values["rule"] == "R2-cross-region"
    forwarded = effect.forwarded
    assert isinstance(forwarded, CaseForwarded)
    assert (forwarded.case_id, forwarded.from_city, forwarded.to_city) == ("T-XR-1", "T", "P")
    assert (forwarded.item_code, forwarded.catalog_version) == ("XR-E", 3)  # P's version
    assert forwarded.application == case.application and forwarded.handover == HANDOVER
    assert (forwarded.submitted_at, forwarded.forwarded_at) == (case.submitted_at, NOW)


def test_an_unsigned_cross_region_case_fails_instead_of_going_out() -> None:
    case = submitted("XR-E", signed=False, office="T12-SC", division="P11")
    effect = effect_of(case, routed_across(case), own_city="T", now=NOW)
    assert isinstance(effect.event, CaseRouteFailed) and effect.forwarded is None
    assert (effect.event.rule, effect.event.failure.code) == ("R2-cross-region", "handover_missing")
    assert effect.event.catalog_version == 3 and effect.handled_by is None


def test_a_route_in_the_city_forwards_nothing() -> None:
    case = submitted("ENT-I", office="T12-SC", division="T12")
    effect = effect_of(case, routed_across(case), own_city="T", now=NOW)
    assert isinstance(effect.event, CaseRouted) and effect.forwarded is None
    assert effect.handled_by == "M-HOU"


# --------------------------------------------------------------------------- the relay

ORIGIN = PartnerCase("P", Role.origin)
HANDLER = PartnerCase("P", Role.handler)
CASE_TYPES = [t for t, e in EVENT_TYPES.items() if e.topic in CASE_TOPICS]


def test_an_origin_relays_only_the_applicants_and_counters_later_steps() -> None:
    assert ORIGIN_STEPS == {
        m.TYPE for m in (CaseWithdrawn, CaseSupplemented, CaseDelivered, CaseClosed, CaseRated)
    }
    for event_type in CASE_TYPES:
        expected = "P" if event_type in ORIGIN_STEPS else None
        assert relay_to(event_type, fromcity=None, own_city="T", case=ORIGIN) == expected
    # routed and route_failed stay here: the partner has the forwarded case
    assert relay_to(CaseRouted.TYPE, fromcity=None, own_city="T", case=ORIGIN) is None


def test_a_handler_relays_every_case_event_to_the_origin() -> None:
    for event_type in CASE_TYPES:
        assert relay_to(event_type, fromcity=None, own_city="T", case=HANDLER) == "P"
    # a relayed event with this region's own fromcity is still this region's
    assert relay_to(CaseAccepted.TYPE, fromcity="T", own_city="T", case=HANDLER) == "P"


def test_an_event_from_another_region_is_never_relayed() -> None:
    for case in (ORIGIN, HANDLER, None):
        assert relay_to(CaseWithdrawn.TYPE, fromcity="P", own_city="T", case=case) is None
        assert (
            relay_to(CaseSubmitted.TYPE, fromcity="P", own_city="T", case=case, adopted_from="P")
            is None
        )


def test_an_adopted_submission_goes_to_its_origin_before_its_row_exists() -> None:
    assert relay_to(CaseSubmitted.TYPE, fromcity=None, own_city="T", case=None, adopted_from="P")
    assert relay_to(CaseSubmitted.TYPE, fromcity=None, own_city="T", case=None) is None


# --------------------------------------------------------------------------- refusals


def refusal(from_city: str = "P") -> CaseAdoptionRefused:
    return CaseAdoptionRefused(
        case_id="T-XR-1",
        from_city=from_city,
        to_city="T",
        code="not_cross_region",
        reason="item XR-E is not cross_region",
        refused_at=NOW,
    )


def test_a_refusal_answers_only_a_case_still_routed_to_the_refusing_partner() -> None:
    across = {"path": "cross_region", "handled_by": "P"}
    assert refusal_applies(refusal(), status="routed", route=across)
    assert not refusal_applies(refusal("Q"), status="routed", route=across)
    assert not refusal_applies(refusal(), status="route_failed", route=None)
    assert not refusal_applies(
        refusal(), status="routed", route={"path": "municipal", "handled_by": "P"}
    )
    # the refusal of another forwarding (a forged record bearing this case id) does not apply
    sent = refusal().model_copy(update={"forwarded_id": "ev-sent"})
    forged = refusal().model_copy(update={"forwarded_id": "ev-forged"})
    assert refusal_applies(sent, status="routed", route=across, forwarded_id="ev-sent")
    assert not refusal_applies(forged, status="routed", route=across, forwarded_id="ev-sent")


def test_a_refusal_becomes_partner_refused_naming_the_partners_code_and_reason() -> None:
    failure = refusal_failure(refusal())
    assert failure.code == "partner_refused"
    assert "not_cross_region" in failure.explanation and "P" in failure.explanation
    assert " / " in failure.explanation  # Chinese / English
