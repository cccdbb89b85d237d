"""Verifications of commitments (告知承诺) on the real database: opened once per approved case
with its clock (warnings and overdue of step `verification`); two answers racing apply exactly
once (the case's row lock), the other is `invalid_state`; the answer stops the clock."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from contracts.common import CaseStatus, Material
from contracts.events import ClockStep
from contracts.rest import VerificationResult
from services.approval import handlers, models, queries
from services.approval.domain import review
from services.approval.domain.review import Outcome, Verified
from services.common import migrations
from services.common.catalog_follower import CatalogFollower
from services.common.db import unit_of_work
from services.common.refusals import Refusal
from services.common.service import ServiceRuntime, ServiceSettings
from services.common.settings import CommonSettings
from tests.outbox_capture import OutboxCapture
from tests.unit.test_approval_review import CALENDAR, make_routed

pytestmark = pytest.mark.integration


def committed_instant(case_id: str, now: datetime) -> Outcome:
    """An instant item with a committed material: approved as it is taken."""
    routed = make_routed(instant=True)
    application = routed.application.model_copy(
        update={"materials": [Material(code="M01"), Material(code="M02", commitment=True)]}
    )
    routed = routed.model_copy(update={"case_id": case_id, "application": application})
    return review.take(routed, now=now, calendar=CALENDAR)


async def test_a_verification_opens_once_and_takes_one_answer_of_two_racing(
    settings: ServiceSettings,
) -> None:
    await asyncio.to_thread(migrations.upgrade, "approval", settings.migration_url)
    case_id = f"VERIFY-{uuid.uuid4().hex[:8]}"
    runtime = ServiceRuntime(settings.model_copy(update={"service": "approval"}))
    approval = handlers.Approval(
        runtime=runtime,
        calendars=CatalogFollower(CommonSettings(), handlers.build_calendar),
        warning_points=(0.5, 0.8),
        followup_days=5,
    )
    now = datetime.now(UTC)  # its clock ahead: no scheduler of the stack fires it meanwhile
    outcome = committed_instant(case_id, now)
    assert outcome.state.status is CaseStatus.approved
    emitted = OutboxCapture(runtime.sessions, "approval", case_id)
    try:
        async with emitted:
            async with unit_of_work(runtime.sessions) as session:
                await session.execute(
                    models.cases.insert().values(queries.case_values(outcome.state, now))
                )
            for _copy in range(2):  # a second copy of the routed event opens nothing new
                async with unit_of_work(runtime.sessions) as session:
                    await handlers.open_verification(session, approval, outcome, CALENDAR, now=now)
            async with runtime.sessions() as session:
                opened = await queries.load_verification(session, case_id)
                timers = (
                    await session.execute(
                        select(models.clock_timers.c.step, models.clock_timers.c.point).where(
                            models.clock_timers.c.case_id == case_id
                        )
                    )
                ).all()
            assert opened is not None and opened.committed == ("M02",)
            assert {(step, float(point)) for step, point in timers} == {
                (ClockStep.verification.value, p) for p in (0.5, 0.8, 1.0)
            }

            async def answer(result: VerificationResult) -> Verified | Refusal:
                async with unit_of_work(runtime.sessions) as session:
                    return await handlers.answer_verification(
                        session,
                        approval=approval,
                        case_id=case_id,
                        department=outcome.state.department,
                        result=result,
                        note="it",
                        now=now + timedelta(days=1),
                    )

            answers = await asyncio.gather(
                answer(VerificationResult.confirmed), answer(VerificationResult.breached)
            )
            events = await emitted.events()
            async with runtime.sessions() as session:
                status = (
                    await session.execute(
                        select(models.cases.c.status).where(models.cases.c.case_id == case_id)
                    )
                ).scalar()
                pending = (
                    await session.execute(
                        select(models.clock_timers.c.point).where(
                            models.clock_timers.c.case_id == case_id,
                            models.clock_timers.c.fired_at.is_(None),
                        )
                    )
                ).all()
        applied = [a for a in answers if isinstance(a, Verified)]
        refused = [a for a in answers if isinstance(a, Refusal)]
        assert len(applied) == 1 and [r.code for r in refused] == ["invalid_state"]
        won = applied[0].verification.status.value
        assert status == ("revoked" if won == "breached" else "approved")
        answered = [
            e.type for e in events if e.type in ("gov.case.verified.v1", "gov.case.revoked.v1")
        ]
        assert answered == ["gov.case.revoked.v1" if won == "breached" else "gov.case.verified.v1"]
        assert pending == []  # the answer stopped the clock: nothing of it is left to fire
    finally:
        await emitted.discard()
        async with unit_of_work(runtime.sessions) as session:
            for table in (models.clock_timers, models.verifications, models.cases):
                await session.execute(table.delete().where(table.c.case_id == case_id))
        await runtime.engine.dispose()
