"""intake's bar on commitments (告知承诺) on the real PostgreSQL: a decision revoked for a
breached commitment, read by the timeline consumer, bars the case's applicant (however the ID
number was typed), once however often it arrives; a revocation for another reason bars no one.

The `intake` schema is shared with whatever else runs on the stack: every test makes its own
cases and applicants, and removes its rows when it ends.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.common import CaseStatus
from contracts.events import CaseRevoked
from services.cli.applicants import resident_id
from services.common import migrations
from services.common.clock import ServiceClock
from services.common.db import unit_of_work
from services.common.envelope import Envelope
from services.common.service import ServiceSettings
from services.intake import handlers, models, queries
from tests.unit.catalog_data import application

pytestmark = pytest.mark.integration

REVOKED_AT = datetime(2026, 6, 1, 9, tzinfo=UTC)


def revocation(case_id: str, reason: str) -> tuple[Envelope, CaseRevoked]:
    revoked = CaseRevoked(
        case_id=case_id, department="IT-DEPT", reason=reason, revoked_at=REVOKED_AT
    )
    envelope = Envelope(
        type=CaseRevoked.TYPE,
        source="/tongban/approval",
        subject=case_id,
        data=revoked.model_dump(mode="json"),
        handledby="IT-DEPT",
    )
    return envelope, revoked


async def test_a_breach_bars_the_applicant_once_and_another_revocation_no_one(
    settings: ServiceSettings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await asyncio.to_thread(migrations.upgrade, "intake", settings.migration_url)
    tag = uuid.uuid4().hex[:10].upper()
    breached, other = f"IT-BAR-{tag}-1", f"IT-BAR-{tag}-2"
    holders = {case_id: resident_id(random.Random(case_id)) for case_id in (breached, other)}
    now = datetime.now(UTC)
    try:
        async with unit_of_work(sessions) as session:
            for case_id, holder in holders.items():
                app = application("DEL-D", office="T1-DC")
                typed = f" {holder.lower()} "  # as a clerk may have typed it
                app = app.model_copy(
                    update={"applicant": app.applicant.model_copy(update={"id_number": typed})}
                )
                row = handlers.case_row(case_id, app, CaseStatus.closed, [], now)
                await session.execute(models.cases.insert().values(row))
        batch = [revocation(breached, "commitment_breached"), revocation(other, "fraud")]
        for _copy in range(2):  # a redelivered batch bars no one twice
            async with unit_of_work(sessions) as session:
                await handlers.follow_case_events(session, batch, clock=ServiceClock())
        async with sessions() as session:
            assert await queries.commitment_barred(session, holders[breached])
            assert await queries.commitment_barred(session, f" {holders[breached].lower()}")
            assert not await queries.commitment_barred(session, holders[other])
            bars = (
                await session.execute(
                    select(func.count()).where(
                        models.barred_holders.c.case_id.in_([breached, other])
                    )
                )
            ).scalar()
            statuses = dict(
                (
                    await session.execute(
                        select(models.cases.c.case_id, models.cases.c.status).where(
                            models.cases.c.case_id.in_([breached, other])
                        )
                    )
                ).all()
            )
        assert bars == 1
        assert statuses == {breached: "revoked", other: "revoked"}
    finally:
        async with unit_of_work(sessions) as session:
            for table in (models.barred_holders, models.timeline, models.cases):
                await session.execute(delete(table).where(table.c.case_id.in_([breached, other])))
