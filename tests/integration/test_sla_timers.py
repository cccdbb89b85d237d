"""SLA timers on the real database: every warning and overdue fires exactly once, with two
approval schedulers racing (as two processes would) and one of them killed mid-way."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, select

from contracts.events import ClockStep
from services.approval import handlers, models
from services.approval.domain import clock
from services.common import migrations
from services.common.db import unit_of_work
from services.common.service import ServiceRuntime, ServiceSettings
from tests.conftest import eventually
from tests.outbox_capture import OutboxCapture

pytestmark = pytest.mark.integration


async def test_each_timer_fires_once_across_two_schedulers_and_a_crash(
    settings: ServiceSettings,
) -> None:
    await asyncio.to_thread(migrations.upgrade, "approval", settings.migration_url)
    prefix = f"SLA-{uuid.uuid4().hex[:8]}"
    approval = settings.model_copy(update={"service": "approval"})
    first, second, third = (ServiceRuntime(approval) for _ in range(3))
    # The stack's approval service may be running: its scheduler may fire some of these timers
    # too (they are due), and its relay must not publish these events to the real topics.
    emitted = OutboxCapture(first.sessions, "approval", prefix)
    async with emitted:
        past = datetime.now(UTC) - timedelta(minutes=5)
        cases = [f"{prefix}-{n:04d}" for n in range(300)]
        async with unit_of_work(first.sessions) as session:
            for case_id in cases:
                points = [
                    clock.ClockPoint(p, past - timedelta(seconds=n), date(2026, 12, 1))
                    for n, p in enumerate((0.5, 0.8, 1.0))
                ]
                await handlers.arm_timers(
                    session,
                    case_id=case_id,
                    department="D-TEST",
                    step=ClockStep.decision,
                    points=points,
                    deadline=date(2026, 12, 1),
                )
        # Re-arming the same points must not add timers or re-arm fired ones.
        async with unit_of_work(first.sessions) as session:
            await handlers.arm_timers(
                session,
                case_id=cases[0],
                department="D-TEST",
                step=ClockStep.decision,
                points=[clock.ClockPoint(0.5, past, None)],
                deadline=None,
            )

        async def hammer(runtime: ServiceRuntime) -> None:
            while True:
                async with unit_of_work(runtime.sessions) as session:
                    await handlers.fire_due_timers(
                        session, runtime=runtime, now=datetime.now(UTC), batch=7
                    )
                await asyncio.sleep(0)

        racing = [asyncio.create_task(hammer(first)), asyncio.create_task(hammer(second))]
        await asyncio.sleep(0.3)
        racing[0].cancel()  # killed in the middle of whatever transaction it had open
        racing.append(asyncio.create_task(hammer(third)))  # the restart

        async def unfired() -> int:
            async with first.sessions() as session:
                return int(
                    (
                        await session.execute(
                            select(func.count())
                            .select_from(models.clock_timers)
                            .where(
                                models.clock_timers.c.case_id.like(f"{prefix}%"),
                                models.clock_timers.c.fired_at.is_(None),
                            )
                        )
                    ).scalar_one()
                )

        async def all_fired() -> bool:
            for task in racing[1:]:
                if task.done():
                    task.result()  # a scheduler that crashed fails the test with its error
            return await unfired() == 0

        try:
            await eventually(all_fired, timeout=60, what="every timer fired")
        finally:
            for task in racing:
                task.cancel()
            await asyncio.gather(*racing, return_exceptions=True)

    try:
        fired_events = await emitted.events()
    finally:
        await emitted.discard()
    fired = [(e.case_id, e.type, e.data.get("elapsed_ratio", 1.0)) for e in fired_events]
    assert len(fired) == len(set(fired)), "a timer fired twice"
    assert len(fired) == len(cases) * 3, "a timer never fired"
    kinds = {(t, ratio) for _c, t, ratio in fired}
    assert kinds == {
        ("gov.case.sla_warning.v1", 0.5),
        ("gov.case.sla_warning.v1", 0.8),
        ("gov.case.overdue.v1", 1.0),
    }
    for runtime in (first, second, third):
        await runtime.engine.dispose()
