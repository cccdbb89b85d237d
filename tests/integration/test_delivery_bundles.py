"""A bundle's one delivery (DESIGN.md §8) on the real PostgreSQL, whatever order its events
come in: the bundle event, its members' results and ends arrive on three topics through three
consumers (and pickups and ratings by REST), so every order must end in exactly one delivery,
each member closed once; two processes applying a bundle's last results at the same moment
deliver it once.

As in test_delivery_ratings: every id starts with the test's prefix, the events delivery writes
are held back from the stack's relay (`OutboxCapture`), and the rows go when the test ends.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.common import CaseStatus, Channel, DeliveryMethod, Level
from contracts.events import (
    BundleMemberRef,
    BundleRated,
    BundleSubmitted,
    CaseApproved,
    CaseDenied,
    CaseWithdrawn,
    Rating,
)
from contracts.rest import BundleResultsView
from services.common.db import unit_of_work
from services.common.envelope import Envelope
from services.common.refusals import Refused
from services.common.service import ServiceRuntime, ServiceSettings
from services.delivery import handlers, models
from services.delivery.handlers import Delivery
from tests.integration.test_delivery_ratings import Cases, decision, delivery, envelope_of

pytestmark = pytest.mark.integration

__all__ = ["delivery"]  # the fixture, shared with test_delivery_ratings

Step = Callable[[Delivery], Awaitable[None]]


@pytest.fixture
async def cases(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[Cases]:
    made = Cases(sessions)
    async with made.emitted:
        yield made
    await made.emitted.discard()
    async with unit_of_work(sessions) as session:
        for table, column in (
            (models.ratings, models.ratings.c.case_id),
            (models.results, models.results.c.case_id),
            (models.bundle_members, models.bundle_members.c.case_id),
            (models.bundles, models.bundles.c.bundle_id),
        ):
            await session.execute(delete(table).where(column.like(f"{made.prefix}%")))


class Bundle:
    """One bundle of three members (two decided, one withdrawn), and the steps that tell
    delivery about it, to apply in any order."""

    def __init__(self, cases: Cases, method: DeliveryMethod = DeliveryMethod.electronic) -> None:
        self.bundle_id = cases.new()
        self.approved, self.denied, self.withdrawn = cases.new(), cases.new(), cases.new()
        self.members = [self.approved, self.denied, self.withdrawn]
        self.office = cases.code("SC")
        self.method = method
        self.departments = {self.approved: cases.code("MKT"), self.denied: cases.code("SOC")}

    def submitted(self) -> BundleSubmitted:
        return BundleSubmitted(
            bundle_id=self.bundle_id,
            bundle_code="B-IT",
            bundle_name="测试一件事",
            lead=self.departments[self.approved],
            time_limit_days=10,
            channel=Channel.counter,
            office_code=self.office,
            members=[
                BundleMemberRef(case_id=c, item_code=f"I-{n}", status=CaseStatus.submitted)
                for n, c in enumerate(self.members)
            ],
            delivery_method=self.method,
            delivery_address="海城市东湖区湖滨路 1 号",
            submitted_at=datetime.now(UTC),
        )

    def decision(self, case_id: str) -> CaseApproved | CaseDenied:
        made = decision(
            case_id,
            department=self.departments[case_id],
            level=Level.district if case_id == self.approved else Level.street,
            intake_office=self.office,
            denied=case_id == self.denied,
            method=self.method,
        )
        return made.model_copy(update={"bundle_id": self.bundle_id})

    def steps(self, sessions: async_sessionmaker[AsyncSession]) -> dict[str, Step]:
        async def bundle_event(delivery: Delivery) -> None:
            event = self.submitted()
            envelope = Envelope(
                type=event.TYPE, source="/tongban/intake", subject=self.bundle_id, data={}
            )
            async with unit_of_work(sessions) as session:
                await handlers.bundle_submitted(session, envelope, event, delivery=delivery)

        def result_of(case_id: str) -> Step:
            async def result(delivery: Delivery) -> None:
                event = self.decision(case_id)
                async with unit_of_work(sessions) as session:
                    await handlers.issue_and_deliver(
                        session, envelope_of(event), event, delivery=delivery
                    )

            return result

        async def withdrawal(delivery: Delivery) -> None:
            event = CaseWithdrawn(
                case_id=self.withdrawn,
                bundle_id=self.bundle_id,
                reason="prerequisite_ended",
                withdrawn_at=datetime.now(UTC),
            )
            envelope = Envelope(
                type=event.TYPE, source="/tongban/intake", subject=self.withdrawn, data={}
            )
            async with unit_of_work(sessions) as session:
                await handlers.member_ended(session, envelope, event, delivery=delivery)

        return {
            "bundle": bundle_event,
            "approved": result_of(self.approved),
            "denied": result_of(self.denied),
            "withdrawn": withdrawal,
        }


async def bundle_row(sessions: async_sessionmaker[AsyncSession], bundle_id: str) -> Any:
    async with sessions() as session:
        return (
            await session.execute(
                select(models.bundles).where(models.bundles.c.bundle_id == bundle_id)
            )
        ).one()


async def test_every_order_of_a_bundles_events_delivers_it_once_after_its_last_member(
    sessions: async_sessionmaker[AsyncSession], delivery: Delivery, cases: Cases
) -> None:
    """The 24 orders of: the bundle event, two results, a withdrawal. A result before the
    bundle event names its bundle and is held; nothing goes out before the last step; then
    each member with a result is delivered and closed once, and the bundle after them."""
    for order in itertools.permutations(["bundle", "approved", "denied", "withdrawn"]):
        bundle = Bundle(cases)
        steps = bundle.steps(sessions)
        for n, name in enumerate(order):
            await steps[name](delivery)
            if n < len(order) - 1:  # held: nothing delivered before the last step
                emitted = await cases.emitted.events()
                assert not [
                    e for e in emitted if e.case_id in bundle.members and "delivered" in e.type
                ], order
                assert bundle.bundle_id not in [e.case_id for e in emitted], order
        for case_id in (bundle.approved, bundle.denied):
            assert await cases.emitted.types(case_id) == [
                "gov.case.result_issued.v1",
                "gov.case.delivered.v1",
                "gov.case.closed.v1",
            ], order
        assert await cases.emitted.types(bundle.withdrawn) == [], order
        assert await cases.emitted.types(bundle.bundle_id) == [
            "gov.bundle.delivered.v1",
            "gov.bundle.closed.v1",
        ], order
        emitted = await cases.emitted.events()
        delivered = next(
            e for e in emitted if e.case_id == bundle.bundle_id and e.type.endswith("delivered.v1")
        )
        assert [(r["case_id"], r["outcome"]) for r in delivered.data["results"]] == [
            (bundle.approved, "approved"),
            (bundle.denied, "denied"),
            (bundle.withdrawn, "withdrawn"),
        ]
        member_events = [e for e in emitted if e.case_id in bundle.members]
        assert {e.data["bundle_id"] for e in member_events} == {bundle.bundle_id}
        row = await bundle_row(sessions, bundle.bundle_id)
        assert row.status == "closed"


async def test_two_processes_finishing_a_bundle_at_once_deliver_it_once(
    settings: ServiceSettings,
    sessions: async_sessionmaker[AsyncSession],
    delivery: Delivery,
    cases: Cases,
) -> None:
    """The last two members' events applied at the same moment by two delivery processes
    (two pools, two transactions): the bundle lock makes one of them see the other's result,
    so every bundle goes out exactly once."""
    other = Delivery(runtime=ServiceRuntime(settings.model_copy(update={"service": "delivery"})))
    bundles = [Bundle(cases) for _ in range(12)]
    try:
        for bundle in bundles:
            steps = bundle.steps(sessions)
            await steps["bundle"](delivery)
            await steps["withdrawn"](delivery)
        await asyncio.gather(
            *(
                step(process)
                for bundle in bundles
                for step, process in (
                    (bundle.steps(sessions)["approved"], delivery),
                    (bundle.steps(sessions)["denied"], other),
                )
            )
        )
    finally:
        await other.runtime.engine.dispose()
    emitted = await cases.emitted.events()
    for bundle in bundles:
        assert [e.type for e in emitted if e.case_id == bundle.bundle_id] == [
            "gov.bundle.delivered.v1",
            "gov.bundle.closed.v1",
        ]
        for case_id in (bundle.approved, bundle.denied):
            assert [e.type for e in emitted if e.case_id == case_id].count(
                "gov.case.closed.v1"
            ) == 1


async def test_a_counter_pickup_bundle_waits_for_its_one_pickup_and_takes_one_rating(
    sessions: async_sessionmaker[AsyncSession], delivery: Delivery, cases: Cases
) -> None:
    bundle = Bundle(cases, DeliveryMethod.counter_pickup)
    steps = bundle.steps(sessions)

    async def pickup(office: str | None = None) -> BundleResultsView:
        async with unit_of_work(sessions) as session:
            return await handlers.pickup_bundle(
                session, delivery=delivery, bundle_id=bundle.bundle_id, office_code=office
            )

    async def refused(attempt: Callable[[], Awaitable[object]]) -> str:
        with pytest.raises(Refused) as caught:
            await attempt()
        return caught.value.refusal.code

    await steps["bundle"](delivery)
    await steps["approved"](delivery)
    assert await refused(pickup) == "bundle_not_ready"
    await steps["denied"](delivery)
    await steps["withdrawn"](delivery)
    # Ready: the results wait at the counter; nothing is delivered yet.
    row = await bundle_row(sessions, bundle.bundle_id)
    assert row.ready_at is not None and row.delivered_at is None
    assert await cases.emitted.types(bundle.approved) == ["gov.case.result_issued.v1"]

    async def member_pickup() -> object:
        async with unit_of_work(sessions) as session:
            return await handlers.pickup(
                session, delivery=delivery, case_id=bundle.approved, office_code=None
            )

    async def member_rating() -> object:
        async with unit_of_work(sessions) as session:
            return await handlers.rate(
                session,
                delivery=delivery,
                case_id=bundle.approved,
                rating=Rating.satisfied,
                comment=None,
            )

    async def rating() -> BundleRated:
        async with unit_of_work(sessions) as session:
            return await handlers.rate_bundle(
                session,
                delivery=delivery,
                bundle_id=bundle.bundle_id,
                rating=Rating.dissatisfied,
                comment="跑了两趟",
            )

    assert await refused(member_pickup) == "bundle_member"
    assert await refused(rating) == "not_delivered"
    assert await refused(lambda: pickup(cases.code("OTHER"))) == "wrong_office"
    view = await pickup(bundle.office)
    assert view.status == "closed"
    assert await refused(pickup) == "invalid_state"
    assert await cases.emitted.types(bundle.approved) == [
        "gov.case.result_issued.v1",
        "gov.case.delivered.v1",
        "gov.case.closed.v1",
    ]
    assert await refused(member_rating) == "bundle_member"
    rated = await rating()
    assert rated.departments == sorted(bundle.departments.values())
    assert await refused(rating) == "already_rated"
    async with sessions() as session:
        rows = (
            await session.execute(
                select(models.ratings.c.case_id, models.ratings.c.department).where(
                    models.ratings.c.case_id.in_(bundle.members)
                )
            )
        ).all()
    assert sorted(rows) == sorted(bundle.departments.items())
    assert await cases.emitted.types(bundle.bundle_id) == [
        "gov.bundle.delivered.v1",
        "gov.bundle.closed.v1",
        "gov.bundle.rated.v1",
    ]
    assert "gov.case.rated.v1" in await cases.emitted.types(bundle.denied)


async def test_a_result_that_lost_the_race_with_its_withdrawal_still_reaches_the_applicant(
    sessions: async_sessionmaker[AsyncSession], delivery: Delivery, cases: Cases
) -> None:
    """A withdrawal applied at delivery before the decision it lost to at approval (intake
    saw the member undecided): the result comes after the bundle went out, or after it ended
    with nothing to deliver, and is delivered then, never left held."""
    went_out = Bundle(cases)
    steps = went_out.steps(sessions)
    await steps["bundle"](delivery)
    await steps["withdrawn"](delivery)
    for case_id in (went_out.approved, went_out.denied):  # both withdrawn, it seemed
        withdrawal = CaseWithdrawn(
            case_id=case_id, bundle_id=went_out.bundle_id, withdrawn_at=datetime.now(UTC)
        )
        async with unit_of_work(sessions) as session:
            await handlers.member_ended(
                session, envelope_of_withdrawal(withdrawal), withdrawal, delivery=delivery
            )
    # Every member ended: nothing to deliver. Then the decisions that won at approval.
    assert (await bundle_row(sessions, went_out.bundle_id)).status == "withdrawn"
    await steps["approved"](delivery)
    assert (await bundle_row(sessions, went_out.bundle_id)).status == "closed"
    await steps["denied"](delivery)  # after the bundle went out: delivered on its own
    assert await cases.emitted.types(went_out.denied) == [
        "gov.case.result_issued.v1",
        "gov.case.delivered.v1",
        "gov.case.closed.v1",
    ]
    assert await cases.emitted.types(went_out.bundle_id) == [
        "gov.bundle.delivered.v1",
        "gov.bundle.closed.v1",
    ]


def envelope_of_withdrawal(event: CaseWithdrawn) -> Envelope:
    return Envelope(type=event.TYPE, source="/tongban/intake", subject=event.case_id, data={})
