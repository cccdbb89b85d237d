"""delivery and cases across regions (DESIGN.md §9) on the real PostgreSQL, through delivery's
handlers (the e2e test runs the same over the broker).

The origin: its routed event (path cross_region) tells delivery where a forwarded case was
taken; the partner's result_issued then makes one result held at that office, whose pickup
emits this region's own delivered and closed. The handler: an adopted counter_pickup case is
issued and held as any case, its own pickup refused 409 `pickup_at_origin`, and the origin's
imported delivered and closed end it without a new event; its imported rating is counted for
the deciding department here.

As in test_delivery_bundles: ids start with the test's prefix, the events delivery writes are
held back from the stack's relay (`OutboxCapture`), and the rows go when the test ends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.common import CaseStatus, DeliveryMethod, Level
from contracts.events import CaseClosed, CaseDelivered, CaseRated, CaseResultIssued, Rating
from services.common.db import unit_of_work
from services.common.envelope import Envelope
from services.common.refusals import Refused
from services.delivery import handlers, models, queries
from services.delivery.handlers import Delivery
from tests.integration.test_delivery_bundles import cases
from tests.integration.test_delivery_ratings import Cases, apply, decision, delivery
from tests.unit.test_delivery_cross_region import LICENCE, adopted, forwarded

pytestmark = pytest.mark.integration

__all__ = ["cases", "delivery"]  # the fixtures, shared with test_delivery_bundles and _ratings

ORIGIN_OFFICE = "HC01-DC"  # as tests.unit.test_delivery_cross_region makes the cases


@pytest.fixture(autouse=True)
async def cross_region_rows_removed(
    sessions: async_sessionmaker[AsyncSession], cases: Cases
) -> AsyncIterator[None]:
    """The bundles' `cases` fixture removes the results and ratings; this, the test's cases
    across regions."""
    yield
    async with unit_of_work(sessions) as session:
        crossed = models.cross_region_cases
        await session.execute(delete(crossed).where(crossed.c.case_id.like(f"{cases.prefix}%")))


def relayed(event: Any, *, fromcity: str | None, source: str) -> Envelope:
    """The record as it arrives here: a fresh event id, `fromcity` when a partner sent it."""
    return Envelope(
        type=event.TYPE,
        source=source,
        subject=event.case_id,
        data=event.model_dump(mode="json"),
        tocity="HC" if fromcity else None,
        fromcity=fromcity,
    )


async def result_row(sessions: async_sessionmaker[AsyncSession], case_id: str) -> Any:
    async with sessions() as session:
        return await queries.load_result(session, case_id)


async def test_the_partners_result_is_held_at_the_origin_office_and_picked_up_there(
    sessions: async_sessionmaker[AsyncSession], delivery: Delivery, cases: Cases
) -> None:
    case_id = cases.new()
    routed = forwarded().model_copy(update={"case_id": case_id})
    issued = CaseResultIssued(case_id=case_id, result=LICENCE, issued_at=routed.submitted_at)

    # The partner's result before this region's routed event reached delivery: it waits,
    # and the routed event holds it at the origin office.
    async with unit_of_work(sessions) as session:
        await handlers.result_from_partner(
            session,
            relayed(issued, fromcity="LZ", source="/tongban/delivery"),
            issued,
            delivery=delivery,
        )
    async with sessions() as session:
        waiting = await session.scalar(
            select(func.count()).where(models.partner_results_waiting.c.case_id == case_id)
        )
        rows = await session.scalar(select(func.count()).where(models.results.c.case_id == case_id))
    assert (waiting, rows) == (1, 0), "kept, not held, until the route is known"
    for _ in range(2):  # redelivered, and relayed twice over the link: one result
        async with unit_of_work(sessions) as session:
            envelope = relayed(routed, fromcity=None, source="/tongban/routing")
            await handlers.cross_region_routed(session, envelope, routed, delivery=delivery)
        async with unit_of_work(sessions) as session:
            envelope = relayed(issued, fromcity="LZ", source="/tongban/delivery")
            await handlers.result_from_partner(session, envelope, issued, delivery=delivery)
    held = queries.result_view(await result_row(sessions, case_id))
    assert (held.status, held.pickup_office, held.outcome) == (
        CaseStatus.result_issued,
        ORIGIN_OFFICE,
        "approved",
    )
    assert held.result == LICENCE and held.delivery_method is DeliveryMethod.counter_pickup
    assert await cases.emitted.types(case_id) == [], "the partner's event is in the timeline"

    async with unit_of_work(sessions) as session:
        picked = await handlers.pickup(
            session, delivery=delivery, case_id=case_id, office_code=ORIGIN_OFFICE
        )
    assert picked.status is CaseStatus.closed
    events = [e for e in await cases.emitted.events() if e.case_id == case_id]
    assert [e.type for e in events] == ["gov.case.delivered.v1", "gov.case.closed.v1"]
    assert events[0].data["office_code"] == ORIGIN_OFFICE
    assert events[1].data["outcome"] == "approved"


async def test_a_posted_result_of_the_partner_is_not_held_here(
    sessions: async_sessionmaker[AsyncSession], delivery: Delivery, cases: Cases
) -> None:
    case_id = cases.new()
    routed = forwarded(DeliveryMethod.postal).model_copy(update={"case_id": case_id})
    issued = CaseResultIssued(case_id=case_id, result=LICENCE, issued_at=routed.submitted_at)
    async with unit_of_work(sessions) as session:
        envelope = relayed(routed, fromcity=None, source="/tongban/routing")
        await handlers.cross_region_routed(session, envelope, routed, delivery=delivery)
        envelope = relayed(issued, fromcity="LZ", source="/tongban/delivery")
        await handlers.result_from_partner(session, envelope, issued, delivery=delivery)
    with pytest.raises(Refused) as refused:
        await result_row(sessions, case_id)
    assert refused.value.refusal.code == "result_not_found"


@pytest.mark.parametrize("submitted_first", [True, False])
async def test_an_adopted_pickup_waits_at_the_origin_and_ends_with_the_origins_pickup(
    sessions: async_sessionmaker[AsyncSession],
    delivery: Delivery,
    cases: Cases,
    submitted_first: bool,
) -> None:
    case_id = cases.new()
    submitted = adopted().model_copy(update={"case_id": case_id})
    approved = decision(
        case_id,
        department=cases.code("SOC"),
        level=Level.municipal,
        intake_office="LZ-MC",  # adopted as if taken at this region's municipal center
        method=DeliveryMethod.counter_pickup,
    )

    async def adopt() -> None:
        async with unit_of_work(sessions) as session:
            envelope = relayed(submitted, fromcity=None, source="/tongban/intake")
            await handlers.adopted_submitted(session, envelope, submitted, delivery=delivery)

    # The submitted event (case.intake.v1) and the decision (case.approval.v1) come through
    # two consumers, in either order.
    if submitted_first:
        await adopt()
    await apply(sessions, delivery, approved)
    if not submitted_first:
        await adopt()
    row = await result_row(sessions, case_id)
    assert (row.status, row.pickup_office, row.intake_office) == (
        "result_issued",
        ORIGIN_OFFICE,
        "LZ-MC",
    )
    assert await cases.emitted.types(case_id) == ["gov.case.result_issued.v1"]

    for office in ("LZ-MC", None, ORIGIN_OFFICE):
        with pytest.raises(Refused) as refused:
            async with unit_of_work(sessions) as session:
                await handlers.pickup(
                    session, delivery=delivery, case_id=case_id, office_code=office
                )
        assert (refused.value.refusal.status, refused.value.refusal.code) == (
            409,
            "pickup_at_origin",
        )
        assert ORIGIN_OFFICE in refused.value.refusal.detail

    at = approved.decided_at
    delivered = CaseDelivered(
        case_id=case_id,
        method=DeliveryMethod.counter_pickup,
        delivered_at=at,
        office_code=ORIGIN_OFFICE,
    )
    closed = CaseClosed(case_id=case_id, outcome="approved", closed_at=at)
    own = relayed(closed, fromcity=None, source="/tongban/delivery")
    async with unit_of_work(sessions) as session:  # this region's own events: not the origin's
        await handlers.picked_up_at_origin(session, own, closed, delivery=delivery)
    assert (await result_row(sessions, case_id)).status == "result_issued"
    for step in (delivered, closed, closed):  # the last one imported again: nothing changes
        envelope = dataclasses.replace(
            relayed(step, fromcity="HC", source="/tongban/delivery"), tocity=None
        )
        async with unit_of_work(sessions) as session:
            await handlers.picked_up_at_origin(session, envelope, step, delivery=delivery)
    ended = await result_row(sessions, case_id)
    assert (ended.status, ended.delivered_at, ended.closed_at) == ("closed", at, at)

    # The applicant rates it at the origin's counter: counted here for the deciding department.
    rated = CaseRated(case_id=case_id, rating=Rating.dissatisfied, comment="慢", rated_at=at)
    for fromcity in (None, "HC", "HC"):  # own events passed over; imported twice: one row
        envelope = relayed(rated, fromcity=fromcity, source="/tongban/delivery")
        async with unit_of_work(sessions) as session:
            await handlers.rated_at_origin(session, envelope, rated, delivery=delivery)
    async with sessions() as session:
        ratings = (
            await session.execute(select(models.ratings).where(models.ratings.c.case_id == case_id))
        ).all()
    assert [
        (x.rating, x.comment, x.department, x.intake_office, x.level, x.rated_at) for x in ratings
    ] == [("dissatisfied", "慢", cases.code("SOC"), "LZ-MC", "municipal", at)]
    assert await cases.emitted.types(case_id) == ["gov.case.result_issued.v1"], "no new event"


async def test_an_adopted_posted_result_is_delivered_here_as_any(
    sessions: async_sessionmaker[AsyncSession], delivery: Delivery, cases: Cases
) -> None:
    case_id = cases.new()
    submitted = adopted(DeliveryMethod.postal).model_copy(update={"case_id": case_id})
    async with unit_of_work(sessions) as session:
        envelope = relayed(submitted, fromcity=None, source="/tongban/intake")
        await handlers.adopted_submitted(session, envelope, submitted, delivery=delivery)
    posted = decision(
        case_id,
        department=cases.code("SOC"),
        level=Level.municipal,
        intake_office="LZ-MC",
        method=DeliveryMethod.postal,
    ).model_copy(update={"delivery_address": "澜州市滨江路 9 号"})
    await apply(sessions, delivery, posted)
    assert (await result_row(sessions, case_id)).status == "closed"
    assert await cases.emitted.types(case_id) == [
        "gov.case.result_issued.v1",
        "gov.case.delivered.v1",
        "gov.case.closed.v1",
    ]
    async with sessions() as session:
        kept = (
            await session.execute(
                select(models.cross_region_cases.c.role).where(
                    models.cross_region_cases.c.case_id == case_id
                )
            )
        ).scalar_one()
    assert kept == "handler"
