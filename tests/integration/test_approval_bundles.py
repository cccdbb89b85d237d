"""A bundle's clock at approval (DESIGN.md §8) on the real database: the same deadline and
timers whether the bundle event or a member's routed event comes first, every event about a
member naming its bundle; the clock stops when every member is decided or ended; its warnings
and overdue fire once across two schedulers, for the lead, naming the members still open."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from contracts.common import CaseStatus, Channel, DeliveryMethod, Material
from contracts.events import (
    BundleMemberRef,
    BundleSubmitted,
    CaseRouted,
    CaseSupplemented,
    CaseWithdrawn,
    ClockStep,
)
from services.approval import handlers, models
from services.approval.domain import clock
from services.common import migrations
from services.common.catalog_follower import CatalogFollower
from services.common.db import unit_of_work
from services.common.envelope import Envelope
from services.common.refusals import Refusal
from services.common.service import ServiceRuntime, ServiceSettings
from services.common.settings import CommonSettings
from tests.outbox_capture import OutboxCapture
from tests.unit.test_approval_review import APPROVE, CALENDAR, make_routed

pytestmark = pytest.mark.integration

LEAD = "IT-LEAD"
DAYS = 86400.0


def approval_at(settings: ServiceSettings, offset_s: float) -> handlers.Approval:
    """An approval process whose clock is `offset_s` from now, with the test calendar."""
    runtime = ServiceRuntime(
        settings.model_copy(update={"service": "approval", "clock_offset_s": offset_s})
    )
    calendars: CatalogFollower[Any] = CatalogFollower(CommonSettings(), handlers.build_calendar)
    calendars.versions[make_routed().route.catalog_version] = CALENDAR
    return handlers.Approval(
        runtime=runtime, calendars=calendars, warning_points=(0.5, 0.8), followup_days=5
    )


class Bundle:
    def __init__(self, prefix: str) -> None:
        self.bundle_id = f"{prefix}-B-{uuid.uuid4().hex[:6]}"
        self.members = [f"{self.bundle_id}-M{n}" for n in range(3)]  # the last one waits

    def submitted(self) -> BundleSubmitted:
        return BundleSubmitted(
            bundle_id=self.bundle_id,
            bundle_code="B-IT",
            bundle_name="测试一件事",
            lead=LEAD,
            time_limit_days=10,
            channel=Channel.counter,
            office_code="HC01-DC",
            members=[
                BundleMemberRef(case_id=c, item_code="MKT-0001", status=CaseStatus.submitted)
                for c in self.members
            ],
            delivery_method=DeliveryMethod.electronic,
            submitted_at=datetime.now(UTC),
        )

    def routed(self, case_id: str, *, named: bool) -> CaseRouted:
        return make_routed(time_limit_days=5).model_copy(
            update={"case_id": case_id, "bundle_id": self.bundle_id if named else None}
        )


def envelope(subject: str) -> Envelope:
    return Envelope(type="test", source="/test", subject=subject, data={})


async def submit(approval: handlers.Approval, bundle: Bundle) -> None:
    async with unit_of_work(approval.runtime.sessions) as session:
        await handlers.bundle_submitted(
            session, envelope(bundle.bundle_id), bundle.submitted(), approval=approval
        )


async def take(approval: handlers.Approval, routed: CaseRouted) -> None:
    async with unit_of_work(approval.runtime.sessions) as session:
        await handlers.take_routed(session, envelope(routed.case_id), routed, approval=approval)


async def approve(approval: handlers.Approval, case_id: str) -> Any:
    async with unit_of_work(approval.runtime.sessions) as session:
        return await handlers.decide_case(
            session,
            approval=approval,
            case_id=case_id,
            decision=APPROVE,
            now=approval.runtime.clock.now(),
        )


async def withdraw(approval: handlers.Approval, bundle: Bundle, case_id: str) -> None:
    withdrawn = CaseWithdrawn(
        case_id=case_id, bundle_id=bundle.bundle_id, withdrawn_at=datetime.now(UTC)
    )
    async with unit_of_work(approval.runtime.sessions) as session:
        await handlers.case_withdrawn(session, envelope(case_id), withdrawn, approval=approval)


@pytest.fixture
async def prefix(settings: ServiceSettings) -> AsyncIterator[str]:
    await asyncio.to_thread(migrations.upgrade, "approval", settings.migration_url)
    made = f"BNDL-{uuid.uuid4().hex[:8]}"
    yield made
    runtime = ServiceRuntime(settings.model_copy(update={"service": "approval"}))
    async with unit_of_work(runtime.sessions) as session:
        for table, column in (
            (models.clock_timers, models.clock_timers.c.case_id),
            (models.cases, models.cases.c.case_id),
            (models.bundle_members, models.bundle_members.c.case_id),
            (models.bundles, models.bundles.c.bundle_id),
        ):
            await session.execute(table.delete().where(column.like(f"{made}%")))
    await runtime.engine.dispose()


async def bundle_timers(approval: handlers.Approval, bundle_id: str) -> list[Any]:
    async with approval.runtime.sessions() as session:
        return list(
            await session.execute(
                select(models.clock_timers).where(
                    models.clock_timers.c.case_id == bundle_id,
                    models.clock_timers.c.step == ClockStep.bundle.value,
                )
            )
        )


@pytest.mark.parametrize("bundle_first", [True, False])
async def test_the_bundle_clock_is_the_same_in_either_order_and_stops_when_all_are_decided(
    settings: ServiceSettings, prefix: str, bundle_first: bool
) -> None:
    approval = approval_at(settings, 0)
    bundle = Bundle(prefix)
    first, second, waiting = bundle.members
    emitted = OutboxCapture(approval.runtime.sessions, "approval", prefix)

    try:
        async with emitted:
            # Routed events that do not name the bundle: approval finds it from its event.
            if bundle_first:
                await submit(approval, bundle)
            await take(approval, bundle.routed(first, named=False))
            await take(approval, bundle.routed(second, named=False))
            if not bundle_first:
                await submit(approval, bundle)
            async with approval.runtime.sessions() as session:
                row = (
                    await session.execute(
                        select(models.bundles).where(models.bundles.c.bundle_id == bundle.bundle_id)
                    )
                ).one()
                case_bundles = (
                    await session.execute(
                        select(models.cases.c.bundle_id).where(
                            models.cases.c.case_id.in_([first, second])
                        )
                    )
                ).scalars()
                assert set(case_bundles) == {bundle.bundle_id}
            expected = clock.case_deadline(CALENDAR, clock.local_date(row.first_accepted_at), 10)
            assert row.deadline == expected and row.decided_at is None
            timers = await bundle_timers(approval, bundle.bundle_id)
            assert sorted(float(t.point) for t in timers) == [0.5, 0.8, 1.0]
            assert {t.department for t in timers} == {LEAD}

            # One approved, one withdrawn; the waiting one withdrawn before it was ever routed.
            await approve(approval, first)
            for case_id in (second, waiting):
                await withdraw(approval, bundle, case_id)
                still = await bundle_timers(approval, bundle.bundle_id)
                assert bool(still) is (case_id == second), "stops with the last member only"
            events = await emitted.events()
        approved = [e for e in events if e.type == "gov.case.approved.v1"]
        assert [e.data["bundle_id"] for e in approved] == [bundle.bundle_id]
        if bundle_first:  # the routed events named no bundle, but approval knew it already
            accepted = [e for e in events if e.type == "gov.case.accepted.v1"]
            assert {e.data["bundle_id"] for e in accepted} == {bundle.bundle_id}
    finally:
        await emitted.discard()
        await approval.runtime.engine.dispose()


async def test_a_bundle_overdue_fires_once_for_the_lead_naming_its_open_members(
    settings: ServiceSettings, prefix: str
) -> None:
    """Accepted 30 days ago on a 10-day limit: both warnings and the overdue are due; two
    schedulers racing fire each once; the approved member is not among the open ones."""
    past = approval_at(settings, -30 * DAYS)
    bundle = Bundle(prefix)
    first, second, _waiting = bundle.members
    emitted = OutboxCapture(past.runtime.sessions, "approval", prefix)
    others = [approval_at(settings, 0) for _ in range(2)]
    try:
        async with emitted:
            # One transaction: the timers are due as they are written, and the stack's own
            # approval service (up for the e2e tests) may fire them too; it must never see the
            # bundle before its first member is approved.
            async with unit_of_work(past.runtime.sessions) as session:
                await handlers.bundle_submitted(
                    session, envelope(bundle.bundle_id), bundle.submitted(), approval=past
                )
                for case_id in (first, second):
                    routed = bundle.routed(case_id, named=True)
                    await handlers.take_routed(session, envelope(case_id), routed, approval=past)
                outcome = await handlers.decide_case(
                    session,
                    approval=past,
                    case_id=first,
                    decision=APPROVE,
                    now=past.runtime.clock.now(),
                )
                assert not isinstance(outcome, Refusal), outcome

            async def fire(runtime: ServiceRuntime) -> None:
                async with unit_of_work(runtime.sessions) as session:
                    await handlers.fire_due_timers(
                        session, runtime=runtime, now=datetime.now(UTC), batch=1
                    )

            for _round in range(4):
                await asyncio.gather(*(fire(o.runtime) for o in others))
            events = [e for e in await emitted.events() if e.case_id == bundle.bundle_id]
    finally:
        await emitted.discard()
        for one in (past, *others):
            await one.runtime.engine.dispose()
    assert sorted((e.type, e.data.get("elapsed_ratio")) for e in events) == [
        ("gov.bundle.overdue.v1", None),
        ("gov.bundle.sla_warning.v1", 0.5),
        ("gov.bundle.sla_warning.v1", 0.8),
    ]
    for event in events:
        assert event.data["lead"] == LEAD
        assert event.data["open_members"] == [second, bundle.members[2]]
    assert all(t.fired_at is not None for t in await bundle_timers(past, bundle.bundle_id))
    assert timedelta(0) < datetime.now(UTC) - min(
        t.due_at for t in await bundle_timers(past, bundle.bundle_id)
    )


async def test_a_held_approval_keeps_the_bundle_clock_until_its_deferred_material_arrives(
    settings: ServiceSettings, prefix: str
) -> None:
    """容缺受理 in a bundle: the approval is held while a deferred material is outstanding, so
    the bundle is not done; the material arrives, the approval takes effect, the clock stops."""
    approval = approval_at(settings, 0)
    bundle = Bundle(prefix)
    held, second, waiting = bundle.members
    emitted = OutboxCapture(approval.runtime.sessions, "approval", prefix)
    routed = bundle.routed(held, named=True)
    deferred = routed.application.model_copy(
        update={"materials": [Material(code="M02", deferred=True)]}
    )
    routed = routed.model_copy(update={"application": deferred})
    try:
        async with emitted:
            await submit(approval, bundle)
            await take(approval, routed)
            for case_id in (second, waiting):
                await withdraw(approval, bundle, case_id)
            outcome = await approve(approval, held)
            assert not isinstance(outcome, Refusal)
            assert outcome.state.status is CaseStatus.approval_held
            assert await bundle_timers(approval, bundle.bundle_id), "held: the clock runs on"
            brought = CaseSupplemented(
                case_id=held,
                bundle_id=bundle.bundle_id,
                materials=[Material(code="M02", sha256="0" * 64)],
                supplemented_at=datetime.now(UTC),
            )
            async with unit_of_work(approval.runtime.sessions) as session:
                await handlers.case_supplemented(
                    session, envelope(held), brought, approval=approval
                )
            assert await bundle_timers(approval, bundle.bundle_id) == []
            approved = [e for e in await emitted.events() if e.type == "gov.case.approved.v1"]
        assert [e.data["bundle_id"] for e in approved] == [bundle.bundle_id]
    finally:
        await emitted.discard()
        await approval.runtime.engine.dispose()


@pytest.mark.parametrize("bundles_known", [True, False])
async def test_two_batches_with_members_of_two_bundles_in_crossed_orders_do_not_deadlock(
    settings: ServiceSettings, prefix: str, bundles_known: bool
) -> None:
    """Two readers' batches (two replicas, say): one routes a member of bundle X and then one
    of Y, the other a member of Y and then one of X, each as soon as the other has taken its
    first. Event after event, each would hold one bundle and wait for the other's: a
    deadlock. `lock_in_order` (the approval readers' `before_batch`) takes the batch's
    bundles first, in one order; both batches commit, every member accepted. With the
    bundles' own events first (their rows there) or not yet (made by the batch)."""
    approval = approval_at(settings, 0)
    x, y = Bundle(f"{prefix}-X"), Bundle(f"{prefix}-Y")
    emitted = OutboxCapture(approval.runtime.sessions, "approval", prefix)
    took_first = [asyncio.Event(), asyncio.Event()]

    async def batch(n: int, members: list[tuple[Bundle, str]]) -> None:
        events = [
            (envelope(case_id), bundle.routed(case_id, named=True)) for bundle, case_id in members
        ]
        async with unit_of_work(approval.runtime.sessions) as session:
            await handlers.lock_in_order(session, events)
            for i, (event_envelope, routed) in enumerate(events):
                await handlers.take_routed(session, event_envelope, routed, approval=approval)
                if i == 0:
                    took_first[n].set()
                    # Wait for the other batch's first (a moment at most: it may be waiting
                    # for this one's locks, as it should).
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(took_first[1 - n].wait(), 1.5)

    try:
        async with emitted:
            if bundles_known:
                for bundle in (x, y):
                    await submit(approval, bundle)
            await asyncio.gather(
                batch(0, [(x, x.members[0]), (y, y.members[0])]),
                batch(1, [(y, y.members[1]), (x, x.members[1])]),
            )
            events = await emitted.events()
    finally:
        await emitted.discard()
        await approval.runtime.engine.dispose()
    accepted = {e.case_id for e in events if e.type == "gov.case.accepted.v1"}
    assert accepted == {*x.members[:2], *y.members[:2]}
