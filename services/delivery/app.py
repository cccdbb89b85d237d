"""delivery: issues every decision's result (e-licence, paper document or decision letter),
delivers it as the applicant chose at intake, closes the case and takes its one rating.

Run: `python -m services.delivery` (port 8004). `create_app` wires one process: settings,
runtime, the consumer of decisions and the REST routes of `api`; tests build their own.
"""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI

from contracts.events import APPROVAL_TOPIC, CaseApproved, CaseDenied, CaseRevoked
from services.common.service import ServiceRuntime, ServiceSettings
from services.delivery import api, handlers


class DeliverySettings(ServiceSettings):
    service: str = "delivery"
    http_port: int = 8004


def create_app(settings: DeliverySettings | None = None) -> FastAPI:
    settings = settings or DeliverySettings()
    runtime = ServiceRuntime(settings)
    delivery = handlers.Delivery(runtime=runtime)
    on_decision = partial(handlers.issue_and_deliver, delivery=delivery)
    # The other types on case.approval.v1 (accepted, sla_warning, ...) are ignored by the runner.
    on_revoked = partial(handlers.revoke_result, delivery=delivery)
    runtime.consume(
        APPROVAL_TOPIC,
        subscriptions={
            CaseApproved: on_decision,
            CaseDenied: on_decision,
            CaseRevoked: on_revoked,
        },
    )
    return runtime.create_app(
        title="tongban delivery",
        description="Results, e-licences, delivery to the applicant, and ratings (DESIGN.md §4).",
        routers=[api.router],
        service=delivery,
    )
