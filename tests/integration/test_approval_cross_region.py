"""approval and cases across regions (DESIGN.md §9) on the real database: a case routed here on
the path `cross_region` is decided by the partner region, so approval takes nothing (no
acceptance, no clock, no worklist row, no event), however often its routed event comes; the
withdrawal and the bad rating that still pass through this region are left alone instead of
waiting for a routing that never comes. An adopted case (routed here as usual) is taken like
any other."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from contracts.events import (
    CaseRated,
    CaseRouted,
    CaseWithdrawn,
    DecisionKind,
    DecisionMade,
    Rating,
)
from services.approval import handlers, models, queries
from services.common import migrations
from services.common.consumer import PermanentError
from services.common.db import unit_of_work
from services.common.service import ServiceSettings
from tests.integration.test_approval_bundles import approval_at, envelope, take
from tests.outbox_capture import OutboxCapture
from tests.unit.test_approval_review import cross_region_route, make_routed

pytestmark = pytest.mark.integration


@pytest.fixture
async def prefix(settings: ServiceSettings) -> AsyncIterator[str]:
    await asyncio.to_thread(migrations.upgrade, "approval", settings.migration_url)
    made = f"XRA-{uuid.uuid4().hex[:8]}"
    yield made
    approval = approval_at(settings, 0)
    async with unit_of_work(approval.runtime.sessions) as session:
        for table in (models.clock_timers, models.followups, models.cases):
            await session.execute(table.delete().where(table.c.case_id.like(f"{made}%")))
        crossed = models.cross_region_cases
        await session.execute(crossed.delete().where(crossed.c.case_id.like(f"{made}%")))
    await approval.runtime.engine.dispose()


def routed_case(case_id: str, *, cross_region: bool) -> CaseRouted:
    routed = make_routed().model_copy(update={"case_id": case_id})
    return cross_region_route(routed, "LZ") if cross_region else routed


async def test_a_case_decided_by_the_partner_region_is_not_taken_here(
    settings: ServiceSettings, prefix: str
) -> None:
    approval = approval_at(settings, 0)
    forwarded, adopted = f"{prefix}-X", f"{prefix}-A"
    emitted = OutboxCapture(approval.runtime.sessions, "approval", prefix)
    try:
        async with emitted:
            for _ in range(2):  # a redelivered (or repeated) routed event changes nothing
                await take(approval, routed_case(forwarded, cross_region=True))
            await take(approval, routed_case(adopted, cross_region=False))
            async with approval.runtime.sessions() as session:
                cases = set(
                    (
                        await session.execute(
                            select(models.cases.c.case_id).where(
                                models.cases.c.case_id.like(f"{prefix}%")
                            )
                        )
                    ).scalars()
                )
                timers = set(
                    (
                        await session.execute(
                            select(models.clock_timers.c.case_id).where(
                                models.clock_timers.c.case_id.like(f"{prefix}%")
                            )
                        )
                    ).scalars()
                )
                partner = await queries.deciding_partner(session, forwarded)
                worklist = await queries.worklist(
                    session, department=make_routed().route.handled_by, status=None, limit=1000
                )
            types = {e.case_id: e.type for e in await emitted.events()}
    finally:
        await emitted.discard()
        await approval.runtime.engine.dispose()
    assert partner == "LZ"
    assert cases == {adopted} and timers == {adopted}, "only the case decided here is taken"
    assert forwarded not in {e.case_id for e in worklist}
    assert adopted in {e.case_id for e in worklist}
    assert forwarded not in types and types[adopted] == "gov.case.accepted.v1"


async def test_its_withdrawal_rating_and_decisions_are_left_alone(
    settings: ServiceSettings, prefix: str
) -> None:
    approval = approval_at(settings, 0)
    case_id = f"{prefix}-X"
    emitted = OutboxCapture(approval.runtime.sessions, "approval", prefix)
    now = datetime.now(UTC)
    try:
        async with emitted:
            await take(approval, routed_case(case_id, cross_region=True))
            async with unit_of_work(approval.runtime.sessions) as session:
                # A bad rating at this region's counter after the pickup: no follow-up here,
                # and no retries waiting for a routing that never comes.
                rated = CaseRated(case_id=case_id, rating=Rating.very_dissatisfied, rated_at=now)
                await handlers.case_rated(session, envelope(case_id), rated, approval=approval)
                withdrawn = CaseWithdrawn(case_id=case_id, withdrawn_at=now)
                await handlers.case_withdrawn(
                    session, envelope(case_id), withdrawn, approval=approval
                )
            made = DecisionMade(
                case_id=case_id, department="HC01-MKT", decision=DecisionKind.approve
            )
            with pytest.raises(PermanentError, match="partner region LZ"):
                async with unit_of_work(approval.runtime.sessions) as session:
                    await handlers.decision_made(
                        session, envelope(case_id), made, approval=approval
                    )
            async with approval.runtime.sessions() as session:
                rows = {
                    table.name: (
                        await session.execute(
                            select(table.c.case_id).where(table.c.case_id == case_id)
                        )
                    ).all()
                    for table in (models.cases, models.followups, models.clock_timers)
                }
            events = await emitted.events()
    finally:
        await emitted.discard()
        await approval.runtime.engine.dispose()
    assert rows == {"cases": [], "followups": [], "clock_timers": []}
    assert events == []
