"""delivery's part in cases across regions (services/delivery/domain/cross_region.py, DESIGN.md
§9): what the origin and the handler keep of a case, the origin's held result, the handler's
refused pickup and the origin's pickup imported there."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from contracts.common import (
    CaseStatus,
    CrossRegionOrigin,
    Delivery,
    DeliveryMethod,
    Path,
    ResultDocument,
    RouteLevel,
)
from contracts.events import (
    CaseClosed,
    CaseDelivered,
    CaseResultIssued,
    CaseRouted,
    CaseSubmitted,
    CaseWithdrawn,
    Event,
)
from services.common.envelope import Envelope
from services.delivery.app import create_app
from services.delivery.domain.cross_region import (
    CrossRegionCase,
    Role,
    adopted_case,
    closed_at_origin,
    forwarded_case,
    held_at_origin,
    names_origin,
    outcome_of,
    pickup_at_origin,
    routes_to_partner,
)
from services.delivery.domain.results import DECISION_LETTER_KIND
from tests.unit.test_approval_review import cross_region_route, make_routed

pytestmark = pytest.mark.unit

AT = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
LICENCE = ResultDocument(kind="licence", license_id="EL-X-1", sha256="ab" * 32, title="许可证")


def forwarded(method: DeliveryMethod = DeliveryMethod.counter_pickup) -> CaseRouted:
    """A case this region (HC) routed to partner LZ, taken at office HC01-DC."""
    routed = cross_region_route(make_routed(intake_office="HC01-DC"), "LZ")
    application = routed.application.model_copy(update={"delivery": Delivery(method=method)})
    return routed.model_copy(update={"application": application})


def adopted(method: DeliveryMethod = DeliveryMethod.counter_pickup) -> CaseSubmitted:
    """The same case as partner LZ adopted it from HC: taken at HC's office HC01-DC."""
    routed = forwarded(method)
    return CaseSubmitted(
        case_id=routed.case_id,
        application=routed.application.model_copy(update={"office_code": "LZ-MC"}),
        submitted_at=AT - timedelta(days=3),
        origin=CrossRegionOrigin(
            city_code="HC", office_code="HC01-DC", catalog_version=7, forwarded_at=AT
        ),
    )


def issued(document: ResultDocument = LICENCE) -> CaseResultIssued:
    return CaseResultIssued(case_id=make_routed().case_id, result=document, issued_at=AT)


def test_the_origin_keeps_where_a_forwarded_case_was_taken_and_how_it_is_delivered() -> None:
    case = forwarded_case(forwarded())
    assert case == CrossRegionCase(
        case_id=make_routed().case_id,
        partner_city="LZ",
        role=Role.origin,
        office_code="HC01-DC",
        delivery_method=DeliveryMethod.counter_pickup,
        item_code="MKT-0001",
    )
    routed_here = make_routed()
    assert routed_here.route.path is not Path.cross_region
    assert forwarded_case(routed_here) is None


def test_the_handler_keeps_the_origin_of_an_adopted_case() -> None:
    case = adopted_case(adopted())
    assert case is not None
    assert (case.role, case.partner_city, case.office_code) == (Role.handler, "HC", "HC01-DC")
    assert case.delivery_method is DeliveryMethod.counter_pickup
    taken_here = adopted().model_copy(update={"origin": None})
    assert adopted_case(taken_here) is None


def test_a_partners_result_waits_at_the_origin_office_decided_by_the_partner() -> None:
    case = forwarded_case(forwarded())
    assert case is not None
    row = held_at_origin(case, issued())
    assert row is not None
    assert row["status"] == CaseStatus.result_issued.value
    assert row["pickup_office"] == row["intake_office"] == "HC01-DC"
    assert (row["department"], row["level"]) == ("LZ", RouteLevel.partner.value)
    assert row["outcome"] == "approved" and row["sha256"] == LICENCE.sha256
    assert row["result"]["license_id"] == "EL-X-1"
    assert row["license_id"] is None, "the licence is the partner's, verified there"
    assert row["issued_at"] == AT and row["delivered_at"] is None


def test_only_a_counter_pickup_of_the_origin_is_held_here() -> None:
    for method in (DeliveryMethod.postal, DeliveryMethod.electronic):
        case = forwarded_case(forwarded(method))
        assert case is not None
        assert held_at_origin(case, issued()) is None, method
    handler = adopted_case(adopted())
    assert handler is not None
    assert held_at_origin(handler, issued()) is None


def test_a_denial_issues_a_decision_letter() -> None:
    letter = ResultDocument(kind=DECISION_LETTER_KIND, sha256="cd" * 32, title="不予决定书")
    assert outcome_of(letter) == "denied"
    assert outcome_of(LICENCE) == "approved"


def test_the_handlers_own_pickup_is_refused_naming_the_origin_office() -> None:
    case = adopted_case(adopted())
    assert case is not None
    refusal = pickup_at_origin(case)
    assert (refusal.status, refusal.code) == (409, "pickup_at_origin")
    assert "HC01-DC" in refusal.detail and "HC" in refusal.detail
    assert refusal.extra == {"pickup_office": "HC01-DC", "origin_city": "HC"}


def test_the_origins_pickup_ends_the_held_result_with_the_origins_times() -> None:
    delivered = CaseDelivered(
        case_id="C", method=DeliveryMethod.counter_pickup, delivered_at=AT, office_code="HC01-DC"
    )
    applies_to, status, times = closed_at_origin(delivered)
    assert applies_to == {CaseStatus.result_issued}
    assert (status, times) == (CaseStatus.delivered, {"delivered_at": AT})
    closed = CaseClosed(case_id="C", outcome="approved", closed_at=AT)
    applies_to, status, times = closed_at_origin(closed)
    assert applies_to == {CaseStatus.result_issued, CaseStatus.delivered}
    assert (status, times) == (CaseStatus.closed, {"closed_at": AT})


def test_the_records_about_cases_across_regions_are_told_from_their_raw_data() -> None:
    assert routes_to_partner(forwarded().model_dump(mode="json"))
    assert not routes_to_partner(make_routed().model_dump(mode="json"))
    assert names_origin(adopted().model_dump(mode="json"))
    assert not names_origin(adopted().model_copy(update={"origin": None}).model_dump(mode="json"))
    junks: list[object] = [{}, {"route": "cross_region"}, [], "x", None]
    for junk in junks:
        assert not routes_to_partner(junk) and not names_origin(junk), junk


def test_delivery_validates_and_keeps_only_the_records_about_cases_across_regions() -> None:
    groups = {r.group_id: r for r in create_app().state.runtime.consumers}

    def accepted(group: str, payload: Event, fromcity: str | None = None) -> bool:
        envelope = Envelope(
            type=payload.TYPE,
            source="/test",
            subject="C",
            data=payload.model_dump(mode="json"),
            fromcity=fromcity,
        )
        accept = groups[group].accept
        return accept is None or accept(envelope)

    assert accepted("delivery-routing", forwarded())
    assert not accepted("delivery-routing", make_routed())
    assert accepted("delivery-intake", adopted())
    assert not accepted("delivery-intake", adopted().model_copy(update={"origin": None}))
    assert accepted("delivery-intake", CaseWithdrawn(case_id="C", withdrawn_at=AT))
    closed = CaseClosed(case_id="C", outcome="approved", closed_at=AT)
    assert accepted("delivery-imported", closed, fromcity="HC")
    assert not accepted("delivery-imported", closed)
