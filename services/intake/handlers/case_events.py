"""Every event of every case topic into the counter's view of the case: its timeline entry,
its status, route and deadline (the hot path of intake, taken in batches; a partner region's
events of a case taken here come the same way, `handlers.partners`), a case another
system submitted adopted, an applicant barred after a breached commitment, and the bundles
whose members moved settled (`bundles.settle_bundles`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.common import Application, CaseStatus
from contracts.events import CaseNotified, CaseSubmitted
from services.common.clock import ServiceClock
from services.common.db import inbox_key
from services.common.envelope import Envelope
from services.common.rows import insert_then_select, update_rows
from services.intake import models, queries
from services.intake.domain import commitments
from services.intake.domain.lifecycle import case_changes
from services.intake.handlers.bundles import settle_bundles
from services.intake.handlers.cases import case_row, update_case
from services.intake.handlers.parts import Intake


async def follow_case_event(
    session: AsyncSession,
    envelope: Envelope,
    payload: Any,
    *,
    clock: ServiceClock,
    intake: Intake | None = None,
) -> None:
    """Any event of a case, from any case topic: timeline entry and the counter's view."""
    await follow_case_events(session, [(envelope, payload)], clock=clock, intake=intake)


ADOPTABLE = (CaseSubmitted.TYPE, CaseNotified.TYPE)


async def follow_case_events(
    session: AsyncSession,
    events: Sequence[tuple[Envelope, Any]],
    *,
    clock: ServiceClock,
    intake: Intake | None = None,
) -> set[str]:
    """A batch of case events, in offset order: one statement puts them on the timeline and
    locks their cases, then each changed case is updated once with its new events folded in
    order (the hot path of intake: every event of every case passes here). The timeline is the
    reader's inbox (`own_inbox`): an event it holds already is not folded in again. With
    `intake`, the bundles of the members whose status changed are settled (`settle_bundle`):
    their waiting members released or ended. The inbox keys of the events new to it."""
    if not events:
        return set()
    # Bundles before cases, the lock order of every request on a bundle (no deadlock); the
    # events name their bundle, so a batch of single cases costs nothing more.
    named_bundles = sorted({b for e, _ in events if isinstance(b := e.data.get("bundle_id"), str)})
    if intake is not None and named_bundles:
        await queries.lock_bundles(session, named_bundles)
    fresh, cases = await _append_and_lock(session, events)
    # The timeline is this reader's inbox (its own key is the event's): an event already on
    # it was applied before (a redelivery, or the same event through the partners' reader).
    events = [(e, p) for e, p in events if inbox_key(e.id) in fresh]
    pending = await _fold_events(session, events, cases, clock=clock)
    now = clock.now()
    await update_rows(
        session,
        models.cases,
        [
            ({"case_id": case_id}, changes | {"updated_at": now})
            for case_id, changes in pending.items()
        ],
    )
    for envelope, _payload in events:
        if commitments.bars_applicant(envelope.type, envelope.data):
            await _bar_applicant(session, envelope)
    moved = {
        case.bundle_id
        for case_id, case in cases.items()
        # the decision too: a denial applied after its letter moves no status (§8)
        if case.bundle_id is not None and {"status", "decision"} & pending.get(case_id, {}).keys()
    }
    await settle_bundles(session, intake, moved)
    return fresh


@dataclass(slots=True)
class _FollowedCase:
    """A case of the batch as its events are folded in: its status, failure and bundle."""

    status: CaseStatus
    failure: dict[str, Any] | None
    bundle_id: str | None


async def _append_and_lock(
    session: AsyncSession, events: Sequence[tuple[Envelope, Any]]
) -> tuple[set[str], dict[str, _FollowedCase]]:
    """Every event of the batch on its case's timeline, once, and the keys of those that were
    not there yet; the batch's cases intake holds, locked for the transaction: one statement."""
    rows = await insert_then_select(
        session,
        models.timeline,
        [
            {
                "event_id": inbox_key(e.id),
                "case_id": e.subject,
                "type": e.type,
                "time": e.time,
                "source": timeline_source(e),
                "data": e.data,
            }
            for e, _ in events
        ],
        _APPEND_AND_LOCK,
        sorted({e.subject for e, _ in events}),
        on_conflict_do_nothing=True,
        returning="event_id",
    )
    fresh: set[str] = set()
    cases: dict[str, _FollowedCase] = {}
    for r in rows:
        if r[4] is not None:  # the row of the entries inserted
            fresh.update(r[4])
        else:
            cases[r[0]] = _FollowedCase(CaseStatus(r[1]), r[2], r[3])
    return fresh, cases


def timeline_source(envelope: Envelope) -> str:
    """Who published the event: its `ce_source`, and `<city>:<ce_source>` for an event another
    region published (a partner's relayed step, or one imported from the origin, §9)."""
    if envelope.fromcity:
        return f"{envelope.fromcity}:{envelope.source}"
    return envelope.source


# One lock order (by case id): no deadlock between batches. The cases' rows, then one row
# with the keys of the timeline entries inserted (`inserted`: the runtime's CTE).
_APPEND_AND_LOCK = (
    "SELECT case_id, status, failure, bundle_id, NULL::text[] AS fresh FROM ("
    f"SELECT case_id, status, failure, bundle_id FROM {models.cases.fullname} "
    "WHERE case_id = ANY($1::text[]) ORDER BY case_id FOR UPDATE) AS locked "
    "UNION ALL SELECT NULL, NULL, NULL, NULL, ARRAY(SELECT event_id FROM inserted)"
)


async def _fold_events(
    session: AsyncSession,
    events: Sequence[tuple[Envelope, Any]],
    cases: dict[str, _FollowedCase],
    *,
    clock: ServiceClock,
) -> dict[str, dict[str, Any]]:
    """Each known case's changes, its events folded in order (`cases` follows them); a case
    another system submitted is adopted (`_adopt_case`) on its first event."""
    pending: dict[str, dict[str, Any]] = {}
    adopted: set[str] = set()
    for envelope, _payload in events:
        case_id = envelope.subject
        if case_id in adopted:
            continue  # the adoption replayed the whole timeline, this event included
        case = cases.get(case_id)
        if case is not None:
            changes = case_changes(
                case.status,
                envelope.type,
                envelope.data,
                case.failure,
                from_partner=envelope.fromcity is not None,
            )
            if changes:
                pending.setdefault(case_id, {}).update(changes)
                case.status = CaseStatus(changes.get("status", case.status))
                case.failure = changes.get("failure", case.failure)
        elif "application" in envelope.data and envelope.type in ADOPTABLE:
            await _adopt_case(session, envelope, now=clock.now())
            adopted.add(case_id)
    return pending


async def _bar_applicant(session: AsyncSession, envelope: Envelope) -> None:
    """A decision revoked for a breached commitment (告知承诺): its applicant, as a holder, is
    barred from commitments. A case intake does not know bars nobody: it was never taken here."""
    cases = models.cases.c
    holder = func.upper(func.btrim(cases.application["applicant"]["id_number"].astext))
    await session.execute(
        pg_insert(models.barred_holders)
        .from_select(
            ["case_id", "holder_id_number", "barred_at"],
            select(cases.case_id, holder, literal(envelope.time)).where(
                cases.case_id == envelope.subject
            ),
        )
        .on_conflict_do_nothing()
    )


async def _adopt_case(session: AsyncSession, envelope: Envelope, *, now: datetime) -> None:
    """A case submitted straight to Kafka by another intake system (a portal, another city
    system): intake answers for it too. Events of other topics may have come first (topics
    are not ordered among themselves), so replay what the timeline already holds."""
    application = Application.model_validate(envelope.data["application"])
    status = CaseStatus.awaiting_supplement
    row = case_row(
        envelope.subject,
        application,
        status,
        envelope.data.get("missing_materials", []),
        envelope.time,
    )
    await session.execute(pg_insert(models.cases).values(row).on_conflict_do_nothing())
    events = await session.execute(
        select(models.timeline.c.type, models.timeline.c.data)
        .where(models.timeline.c.case_id == envelope.subject)
        .order_by(models.timeline.c.time, models.timeline.c.event_id)
    )
    changes: dict[str, Any] = {}
    for event_type, data in events:
        changes |= case_changes(status, event_type, data or {}, changes.get("failure"))
        status = CaseStatus(changes.get("status", status))
    if changes:
        await update_case(session, envelope.subject, changes, now=now)
