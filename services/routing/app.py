"""routing: owns the catalog, routes every submitted case, keeps the triage queue.

Run: `python -m services.routing` (port 8002). `create_app` wires one process: settings,
runtime, consumers, background tasks and the REST routes of `api`; tests build their own.
"""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI
from pydantic import Field

from contracts.events import (
    CASE_TOPICS,
    EVENT_TYPES,
    INTAKE_TOPIC,
    CaseAdoptionRefused,
    CaseSubmitted,
)
from services.common.department_topics import DepartmentTopics
from services.common.service import ServiceRuntime, ServiceSettings
from services.routing import api, handlers


class RoutingSettings(ServiceSettings):
    service: str = "routing"
    http_port: int = 8002
    # A moment's wait after a fetch with records, for bigger batches: with every event a
    # batch of one the machine is full from 25 cases/s (README, Performance).
    consumer_linger_ms: int = Field(10, ge=0)
    # Bound on creating department topics inline (catalog load, start-up); on failure the
    # background task keeps trying (services.common.department_topics).
    department_topics_timeout_s: float = Field(10.0, gt=0)


def create_app(settings: RoutingSettings | None = None) -> FastAPI:
    settings = settings or RoutingSettings()
    runtime = ServiceRuntime(settings)
    catalogs = runtime.follow_catalog(handlers.build_index)
    city = partial(handlers.own_city, catalogs)
    routing = handlers.Routing(
        runtime=runtime,
        catalogs=catalogs,
        topics=DepartmentTopics(settings, timeout_s=settings.department_topics_timeout_s),
        partners=runtime.follow_partner_catalogs(handlers.build_index, own_city=city),
    )
    runtime.consume(
        INTAKE_TOPIC,
        subscriptions={CaseSubmitted: partial(handlers.route_submission, routing=routing)},
    )
    # Across regions (DESIGN.md §9): the steps of cases taken for or adopted from a partner
    # region go there (every case event type; the handler picks), and a partner's refusal of a
    # forwarded case puts it in triage.
    relay = partial(handlers.relay_case_event, routing=routing)
    runtime.consume(
        *CASE_TOPICS,
        name="routing-xregion",
        subscriptions={e.model: relay for e in EVENT_TYPES.values() if e.topic in CASE_TOPICS},
        batch_handler=partial(handlers.relay_case_events, routing=routing),
        relevant=handlers.concern_partners,
    )
    runtime.consume_partners(
        name="routing-partners",
        subscriptions={CaseAdoptionRefused: partial(handlers.partner_refused, routing=routing)},
        own_city=city,
    )
    runtime.on_startup(routing.catalogs.start)
    runtime.on_startup(partial(handlers.ensure_department_topics, routing))
    runtime.background(routing.catalogs.run, routing.catalogs.stop)
    runtime.background(routing.topics.run, routing.topics.stop)
    return runtime.create_app(
        title="tongban routing",
        description="Decides which level and department handles a case (DESIGN.md §3).",
        routers=[api.router],
        service=routing,
    )
