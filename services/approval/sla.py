"""Durable SLA timers: warnings at shares of the committed limit, overdue at 100% (and the
same for follow-ups), fired exactly once per case, step and point.

Timers are rows written in the same transaction as the state that sets them; a scheduler in
every approval process fires the due ones with `FOR UPDATE SKIP LOCKED`, writing the event to
the outbox and `fired_at` in one transaction. So two processes never fire the same timer, a
restart loses none, and a fired timer is never re-armed by a later reschedule.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.events import CaseOverdue, CaseSlaWarning, ClockStep
from services.approval import clock, models
from services.common.db import unit_of_work
from services.common.logs import get_logger
from services.common.service import ServiceRuntime
from services.common.workdays import WorkCalendar

log = get_logger(__name__)

timers = models.clock_timers


async def arm(
    session: AsyncSession,
    *,
    case_id: str,
    department: str,
    step: ClockStep,
    points: Sequence[clock.ClockPoint],
    deadline: date | None,
) -> None:
    """Set (or move) a case's timers; points already fired stay fired."""
    if not points:
        return
    rows = [
        {
            "case_id": case_id,
            "step": step.value,
            "point": Decimal(str(p.point)),
            "department": department,
            "deadline": deadline,
            "due_at": p.due_at,
        }
        for p in points
    ]
    insert = pg_insert(timers).values(rows)
    await session.execute(
        insert.on_conflict_do_update(
            index_elements=[timers.c.case_id, timers.c.step, timers.c.point],
            set_={"due_at": insert.excluded.due_at, "deadline": insert.excluded.deadline},
            where=timers.c.fired_at.is_(None),
        )
    )


async def pause(session: AsyncSession, case_id: str, step: ClockStep) -> None:
    """Waiting for a supplement: nothing falls due until the clock resumes."""
    await session.execute(
        update(timers)
        .where(
            timers.c.case_id == case_id, timers.c.step == step.value, timers.c.fired_at.is_(None)
        )
        .values(due_at=None)
    )


async def disarm(session: AsyncSession, case_id: str, step: ClockStep) -> None:
    """Decided, withdrawn or answered: the pending timers go; the fired ones stay as record."""
    await session.execute(
        delete(timers).where(
            timers.c.case_id == case_id, timers.c.step == step.value, timers.c.fired_at.is_(None)
        )
    )


async def fire_due(
    session: AsyncSession, *, runtime: ServiceRuntime, now: datetime, batch: int = 500
) -> int:
    """Fire the timers due at `now` that no other process holds; return how many."""
    due = (
        await session.execute(
            select(timers)
            .where(timers.c.fired_at.is_(None), timers.c.due_at <= now)
            .order_by(timers.c.due_at)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
    ).all()
    for row in due:
        try:
            payload = _clock_event(row)
        except ValueError as exc:
            # A row no event can be made of must not block every timer behind it.
            log.error("unusable clock timer skipped", case_id=row.case_id, error=repr(exc))
            continue
        await runtime.emit(session, payload, handledby=row.department)
    if due:
        await session.execute(
            update(timers)
            .where(
                or_(
                    *(
                        and_(
                            timers.c.case_id == r.case_id,
                            timers.c.step == r.step,
                            timers.c.point == r.point,
                        )
                        for r in due
                    )
                )
            )
            .values(fired_at=now)
        )
    return len(due)


def _clock_event(row: Any) -> CaseOverdue | CaseSlaWarning:
    step = ClockStep(row.step)
    if row.point >= 1:
        return CaseOverdue(
            case_id=row.case_id, department=row.department, deadline=row.deadline, step=step
        )
    return CaseSlaWarning(
        case_id=row.case_id,
        department=row.department,
        deadline=row.deadline,
        elapsed_ratio=float(row.point),
        step=step,
    )


class ClockScheduler:
    """Fires due timers every `poll_s`; on a new catalog version, sets deadlines that the old
    calendar could not (`on_calendar`)."""

    def __init__(
        self,
        runtime: ServiceRuntime,
        *,
        poll_s: float,
        clock_offset: timedelta = timedelta(0),
        latest_calendar: Callable[[], tuple[int, WorkCalendar] | None] = lambda: None,
        on_calendar: Callable[[WorkCalendar], object] | None = None,
    ) -> None:
        self.runtime = runtime
        self.poll_s = poll_s
        self.clock_offset = clock_offset
        self._latest_calendar = latest_calendar
        self._on_calendar = on_calendar
        self._seen_version: int | None = None
        self._stop = asyncio.Event()
        self.fired = 0

    def stop(self) -> None:
        self._stop.set()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.clock_offset

    async def tick(self) -> int:
        fired = 0
        while True:
            async with unit_of_work(self.runtime.sessions) as session:
                n = await fire_due(session, runtime=self.runtime, now=self.now())
            fired += n
            if n < 500:
                break
        latest = self._latest_calendar()
        if latest is not None and latest[0] != self._seen_version and self._on_calendar:
            result = self._on_calendar(latest[1])
            if asyncio.iscoroutine(result):
                await result
            self._seen_version = latest[0]
        self.fired += fired
        return fired

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.tick()
            except Exception as exc:  # the database may be restarting: try again next tick
                log.warning("clock scheduler tick failed", error=repr(exc))
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self.poll_s)
            except TimeoutError:
                pass
