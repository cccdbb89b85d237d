"""intake: the counter's (and online channel's) door. Takes applications, refuses at once what
it can see is wrong, and answers for a case's whole story from every case topic.

Run: `python -m services.intake` (port 8001). `create_app` wires one process: settings,
runtime, consumers, start-up checks and the REST routes of `api`; tests build their own.
"""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI
from pydantic import Field

from contracts.events import (
    BUNDLE_TOPIC,
    CASE_TOPICS,
    EVENT_TYPES,
    LICENSE_TOPIC,
    LicenseIssued,
    LicenseRevoked,
)
from services.common.limits import RateLimiter
from services.common.service import ServiceRuntime, ServiceSettings
from services.intake import api, handlers


class IntakeSettings(ServiceSettings):
    service: str = "intake"
    http_port: int = 8001
    # After a fetch with records, wait this long for more (TONGBAN_CONSUMER_LINGER_MS): the
    # timeline is off every case's path, and its batches of one each took the CPU the
    # routing path waited for (README, Performance: p99 submit->routed 360 -> 120 ms at 25/s).
    consumer_linger_ms: int = Field(100, ge=0)


def create_app(settings: IntakeSettings | None = None) -> FastAPI:
    settings = settings or IntakeSettings()
    runtime = ServiceRuntime(settings)
    catalogs = runtime.follow_catalog(handlers.build_index)
    intake = handlers.Intake(
        runtime=runtime,
        catalogs=catalogs,
        limiter=RateLimiter.from_settings(settings),
        partners=runtime.follow_partner_catalogs(
            handlers.build_index, own_city=lambda: handlers.city_of_catalog(catalogs)
        ),
    )
    runtime.consume(
        *CASE_TOPICS,
        name="intake-timeline",
        batch_handler=partial(handlers.follow_case_events, clock=runtime.clock, intake=intake),
        own_inbox=True,  # the timeline: an entry per event id, the event folded in once
        subscriptions={
            spec.model: partial(handlers.follow_case_event, clock=runtime.clock, intake=intake)
            for spec in EVENT_TYPES.values()
            if spec.topic in CASE_TOPICS
        },
    )
    # Bundles (DESIGN.md §8): the bundle's own story, for its status and its one timeline.
    runtime.consume(
        BUNDLE_TOPIC,
        name="intake-bundles",
        batch_handler=partial(handlers.follow_bundle_events, clock=runtime.clock),
        subscriptions={
            spec.model: partial(handlers.follow_bundle_event, clock=runtime.clock)
            for spec in EVENT_TYPES.values()
            if spec.topic == BUNDLE_TOPIC
        },
    )
    # intake's copy of the licence library, for reuse at submission (DESIGN.md §7).
    runtime.consume(
        LICENSE_TOPIC,
        name="intake-licenses",
        subscriptions={
            LicenseIssued: partial(handlers.record_license_issued, intake=intake),
            LicenseRevoked: handlers.record_license_revoked,
        },
    )
    # Across regions (DESIGN.md §9): cases forwarded here adopted (or refused), the origin's
    # steps of an adopted case imported, the handling region's events of a case taken here
    # into its timeline: whatever the partners' mirrored xregion.out.v1 addresses to this city.
    runtime.consume_partners(
        name="intake-partners",
        subscriptions=handlers.partner_subscriptions(intake),
        own_city=intake.own_city,
    )
    runtime.on_startup(partial(handlers.check_handover_keys, intake))
    runtime.on_startup(intake.catalogs.start)
    runtime.background(intake.catalogs.run, intake.catalogs.stop)
    return runtime.create_app(
        title="tongban intake",
        description="Counter and online intake of government-service cases (DESIGN.md §4).",
        routers=[api.router],
        service=intake,
    )
