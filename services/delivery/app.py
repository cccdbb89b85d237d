"""delivery: issues every decision's result (e-licence, paper document or decision letter),
delivers it as the applicant chose at intake, closes the case and takes its one rating; a
bundle's results go out once, together (DESIGN.md §8); a case across regions (§9) is picked
up at the office that took it, in whichever region decided it.

Run: `python -m services.delivery` (port 8004). `create_app` wires one process: settings,
runtime, the consumer of decisions and the REST routes of `api`; tests build their own.
"""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI
from pydantic import Field

from contracts.events import (
    APPROVAL_TOPIC,
    BUNDLE_TOPIC,
    DELIVERY_TOPIC,
    INTAKE_TOPIC,
    ROUTING_TOPIC,
    BundleSubmitted,
    CaseApproved,
    CaseClosed,
    CaseDelivered,
    CaseDenied,
    CaseRated,
    CaseResultIssued,
    CaseRevoked,
    CaseRouted,
    CaseSubmitted,
    CaseTerminated,
    CaseWithdrawn,
)
from services.common.service import ServiceRuntime, ServiceSettings
from services.delivery import api, handlers
from services.delivery.domain import cross_region


class DeliverySettings(ServiceSettings):
    service: str = "delivery"
    http_port: int = 8004
    # A moment's wait after a fetch with records, for bigger batches: with every event a
    # batch of one the machine is full from 25 cases/s (README, Performance).
    consumer_linger_ms: int = Field(10, ge=0)


def create_app(settings: DeliverySettings | None = None) -> FastAPI:
    settings = settings or DeliverySettings()
    runtime = ServiceRuntime(settings)
    delivery = handlers.Delivery(runtime=runtime)
    on_decision = partial(handlers.issue_and_deliver, delivery=delivery)
    # The other types on case.approval.v1 (accepted, sla_warning, ...) are ignored by the runner.
    on_revoked = partial(handlers.revoke_result, delivery=delivery)
    # A bundle's member that ends without a result (DESIGN.md §8) no longer holds it back.
    on_ended = partial(handlers.member_ended, delivery=delivery)
    runtime.consume(
        APPROVAL_TOPIC,
        subscriptions={
            CaseApproved: on_decision,
            CaseDenied: on_decision,
            CaseRevoked: on_revoked,
            CaseTerminated: on_ended,
        },
    )
    runtime.consume(
        BUNDLE_TOPIC,
        name="delivery-bundle",
        subscriptions={
            BundleSubmitted: partial(handlers.bundle_submitted, delivery=delivery),
        },
    )
    # Cases across regions (DESIGN.md §9): an adopted case's origin comes with its submitted
    # event; a case forwarded to a partner, with this region's routed event.
    # Only those few records are validated and kept (`accept`): every case passes these topics.
    runtime.consume(
        INTAKE_TOPIC,
        subscriptions={
            CaseWithdrawn: on_ended,
            CaseSubmitted: partial(handlers.adopted_submitted, delivery=delivery),
        },
        accept=lambda e: e.type != CaseSubmitted.TYPE or cross_region.names_origin(e.data),
    )
    runtime.consume(
        ROUTING_TOPIC,
        subscriptions={CaseRouted: partial(handlers.cross_region_routed, delivery=delivery)},
        accept=lambda e: cross_region.routes_to_partner(e.data),
    )
    # The origin: the partner's issued results of the cases it forwarded, held for pickup here.
    city = runtime.follow_catalog(handlers.city_of)
    runtime.on_startup(city.start)
    runtime.background(city.run, city.stop)
    runtime.consume_partners(
        name="delivery-partners",
        subscriptions={CaseResultIssued: partial(handlers.result_from_partner, delivery=delivery)},
        own_city=lambda: city.latest,
    )
    # The handler: the origin's pickup and rating of an adopted case, imported with `fromcity`.
    on_origin_pickup = partial(handlers.picked_up_at_origin, delivery=delivery)
    runtime.consume(
        DELIVERY_TOPIC,
        name="delivery-imported",
        accept=lambda e: e.fromcity is not None,  # not this region's own delivery events
        subscriptions={
            CaseDelivered: on_origin_pickup,
            CaseClosed: on_origin_pickup,
            CaseRated: partial(handlers.rated_at_origin, delivery=delivery),
        },
    )
    return runtime.create_app(
        title="tongban delivery",
        description="Results, e-licences, delivery to the applicant, and ratings (DESIGN.md §4).",
        routers=[api.router],
        service=delivery,
    )
