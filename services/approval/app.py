"""approval: every routed case lands in its deciding department's worklist, accepted at once
with its deadline; departments decide by REST or by `gov.case.decision.v1` events, through the
same rules (`domain.review`).

Run: `python -m services.approval` (port 8003). `create_app` wires one process: settings,
runtime, consumers, background tasks and the REST routes of `api`; tests build their own.
"""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI
from pydantic import Field

from contracts.events import (
    BUNDLE_TOPIC,
    DECISIONS_TOPIC,
    DELIVERY_TOPIC,
    INTAKE_TOPIC,
    ROUTING_TOPIC,
    BundleSubmitted,
    BundleWithdrawn,
    CaseRated,
    CaseRouted,
    CaseSupplemented,
    CaseWithdrawn,
    DecisionMade,
)
from services.approval import api, handlers
from services.common.service import ServiceRuntime, ServiceSettings


class ApprovalSettings(ServiceSettings):
    service: str = "approval"
    http_port: int = 8003
    # A moment's wait after a fetch with records, for bigger batches: with every event a
    # batch of one the machine is full from 25 cases/s (README, Performance).
    consumer_linger_ms: int = Field(10, ge=0)
    # SLA warnings at these shares of the committed limit; overdue at 100% always.
    sla_warning_points: list[float] = Field(default=[0.5, 0.8])
    sla_poll_s: float = Field(1.0, gt=0)
    # Working days a department has to answer a dissatisfied rating.
    followup_days: int = Field(5, ge=1)


def create_app(settings: ApprovalSettings | None = None) -> FastAPI:
    settings = settings or ApprovalSettings()
    runtime = ServiceRuntime(settings)
    approval = handlers.Approval(
        runtime=runtime,
        calendars=runtime.follow_catalog(handlers.build_calendar),
        warning_points=tuple(settings.sla_warning_points),
        followup_days=settings.followup_days,
    )
    scheduler = handlers.ClockScheduler(approval, poll_s=settings.sla_poll_s)
    # One consumer group per topic: a decision that overtook its case's routed event waits in
    # its own consumer's retries while the routing consumer goes on and takes the case.
    runtime.consume(
        ROUTING_TOPIC,
        subscriptions={CaseRouted: partial(handlers.take_routed, approval=approval)},
        before_batch=handlers.lock_in_order,
    )
    runtime.consume(
        DECISIONS_TOPIC,
        subscriptions={DecisionMade: partial(handlers.decision_made, approval=approval)},
        before_batch=handlers.lock_in_order,
    )
    runtime.consume(
        INTAKE_TOPIC,
        subscriptions={
            CaseWithdrawn: partial(handlers.case_withdrawn, approval=approval),
            CaseSupplemented: partial(handlers.case_supplemented, approval=approval),
        },
        before_batch=handlers.lock_in_order,
    )
    runtime.consume(
        DELIVERY_TOPIC,
        subscriptions={CaseRated: partial(handlers.case_rated, approval=approval)},
    )
    # The bundles' clocks (DESIGN.md §8): their members, lead, limit, and withdrawal.
    runtime.consume(
        BUNDLE_TOPIC,
        name="approval-bundle",
        subscriptions={
            BundleSubmitted: partial(handlers.bundle_submitted, approval=approval),
            BundleWithdrawn: partial(handlers.bundle_withdrawn, approval=approval),
        },
        before_batch=handlers.lock_in_order,
    )
    runtime.on_startup(partial(handlers.load_handover_trust, approval))
    runtime.on_startup(approval.calendars.start)
    runtime.background(approval.calendars.run, approval.calendars.stop)
    runtime.background(scheduler.run, scheduler.stop)
    return runtime.create_app(
        title="tongban approval",
        description="Acceptance, deadlines and decisions of routed cases (DESIGN.md §1, §3, §4).",
        routers=[api.router],
        service=approval,
    )
