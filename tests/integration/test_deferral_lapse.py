"""The lapse of deferred materials (容缺受理) on the real database: each case whose due day is
over ends terminated exactly once with two approval schedulers racing; a case whose materials
arrived (its lapse disarmed) and a case still within its due day stay as they are."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select

from contracts.common import CaseStatus, Material
from contracts.events import DecisionKind
from services.approval import handlers, models, queries
from services.approval.domain import review
from services.approval.domain.review import CaseState
from services.common import migrations
from services.common.db import unit_of_work
from services.common.service import ServiceRuntime, ServiceSettings
from tests.outbox_capture import OutboxCapture
from tests.unit.test_approval_review import CALENDAR, NOW, make_routed

pytestmark = pytest.mark.integration


def deferred_case(case_id: str, due: date, *, held: bool) -> CaseState:
    routed = make_routed()
    application = routed.application.model_copy(
        update={"materials": [Material(code="M01"), Material(code="M02", deferred=True)]}
    )
    routed = routed.model_copy(update={"case_id": case_id, "application": application})
    state = replace(review.take(routed, now=NOW, calendar=CALENDAR).state, deferred_due=due)
    if held:
        state = replace(
            state, status=CaseStatus.approval_held, decision=DecisionKind.approve, decided_at=NOW
        )
    return state


async def test_each_lapse_terminates_its_case_once_across_two_schedulers(
    settings: ServiceSettings,
) -> None:
    await asyncio.to_thread(migrations.upgrade, "approval", settings.migration_url)
    prefix = f"LAPSE-{uuid.uuid4().hex[:8]}"
    approval = settings.model_copy(update={"service": "approval"})
    first, second = ServiceRuntime(approval), ServiceRuntime(approval)
    now = datetime.now(UTC)
    yesterday = (now - timedelta(days=2)).date()
    lapsing = [f"{prefix}-{n:03d}" for n in range(40)]
    brought, not_yet = f"{prefix}-BROUGHT", f"{prefix}-NOT-YET"
    emitted = OutboxCapture(first.sessions, "approval", prefix)
    async with emitted:
        async with unit_of_work(first.sessions) as session:
            for n, case_id in enumerate(lapsing):
                state = deferred_case(case_id, yesterday, held=n % 2 == 0)
                await session.execute(models.cases.insert().values(queries.case_values(state, now)))
                await handlers.arm_deferral_lapse(session, state)
            for case_id, due in ((brought, yesterday), (not_yet, now.date() + timedelta(days=30))):
                state = deferred_case(case_id, due, held=True)
                await session.execute(models.cases.insert().values(queries.case_values(state, now)))
                await handlers.arm_deferral_lapse(session, state)
            # The material of one case arrives first: approved, and its lapse disarmed. In the
            # same transaction: the stack's own approval scheduler (up for the e2e tests) would
            # otherwise be free to lapse it in between.
            case = await queries.load_case(session, brought, lock=True)
            assert isinstance(case, CaseState)
            arrived = review.materials_arrived(case, ["M02"], now=now, calendar=CALENDAR)
            assert arrived is not None and arrived.state.status is CaseStatus.approved
            await session.execute(
                models.cases.update()
                .where(models.cases.c.case_id == brought)
                .values(queries.case_values(arrived.state, now))
            )
            await handlers.disarm_timers(session, brought, handlers.LAPSE_STEP)

        fired = await asyncio.gather(
            *(handlers.fire_due_lapses(r, now=now, batch=7) for r in (first, second, first))
        )
        # Whatever the batches left (skipped while another held the case) goes next tick.
        while await handlers.fire_due_lapses(second, now=now):
            pass
        assert sum(fired) <= len(lapsing)

    try:
        events = await emitted.events()
    finally:
        await emitted.discard()
    terminated = [e.case_id for e in events if e.type == "gov.case.terminated.v1"]
    assert sorted(terminated) == lapsing, "every lapsed case terminated exactly once"
    assert {tuple(e.data["outstanding"]) for e in events} == {("M02",)}
    assert {e.data["reason"] for e in events} == {"deferred_materials_lapsed"}
    async with first.sessions() as session:
        rows = (
            await session.execute(
                select(models.cases.c.case_id, models.cases.c.status).where(
                    models.cases.c.case_id.like(f"{prefix}%")
                )
            )
        ).all()
        unfired = (
            (
                await session.execute(
                    select(models.clock_timers.c.case_id).where(
                        models.clock_timers.c.case_id.like(f"{prefix}%"),
                        models.clock_timers.c.step == handlers.LAPSE_STEP,
                        models.clock_timers.c.fired_at.is_(None),
                    )
                )
            )
            .scalars()
            .all()
        )
    status = dict(rows)
    assert {status[c] for c in lapsing} == {"terminated"}
    assert status[brought] == "approved" and status[not_yet] == "approval_held"
    assert unfired == [not_yet]  # still within its due day
    for runtime in (first, second):
        await runtime.engine.dispose()
