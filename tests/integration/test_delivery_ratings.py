"""delivery's results and 好差评 ratings on the real PostgreSQL: one result and one licence per
case however often its decision arrives, one rating per case bound to the case, the intake
office, the deciding department and its level, and the statistics counted by SQL.

The `delivery` schema is shared with whatever else runs on the stack: every test makes its own
department and office codes and only looks at rows carrying them, and removes its rows when it
ends. Its outbox events are taken out in the transaction that wrote them (`OutboxCapture`):
the stack's delivery relay may be running, and no broker should ever see them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.common import DeliveryMethod, ItemSnapshot, Level
from contracts.events import CaseApproved, CaseDenied, CaseRated, Rating
from contracts.rest import RatingGrouping, RatingStatsRow
from services.common import migrations
from services.common.city import CITY_TZ
from services.common.db import unit_of_work
from services.common.envelope import Envelope
from services.common.refusals import Refused
from services.common.service import ServiceRuntime, ServiceSettings
from services.delivery import handlers, models, queries
from services.delivery.app import DeliverySettings, create_app
from services.delivery.domain.stats import RatedPeriod, rated_period
from services.delivery.handlers import Delivery
from services.delivery.queries import stats_query
from tests.auth_helpers import auth_headers
from tests.outbox_capture import OutboxCapture

pytestmark = pytest.mark.integration

ALL_TIME = RatedPeriod(None, None)


@pytest.fixture
async def delivery(settings: ServiceSettings) -> AsyncIterator[Delivery]:
    """delivery's parts as app.py wires them, minus the lifespan: the handlers only use its
    runtime to write events into delivery's outbox (no relay, no consumer, no Kafka here)."""
    # Alembic's env runs its own event loop; keep it off ours.
    await asyncio.to_thread(migrations.upgrade, "delivery", settings.migration_url)
    runtime = ServiceRuntime(settings.model_copy(update={"service": "delivery"}))
    yield Delivery(runtime=runtime)
    await runtime.engine.dispose()


class Cases:
    """Case ids made by one test, removed with everything delivery wrote for them; the events
    delivery emitted for them are in `emitted`."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.tag = uuid.uuid4().hex[:10].upper()
        self.ids: list[str] = []
        self.prefix = f"HC-IT-{self.tag}-"
        self.emitted = OutboxCapture(sessions, "delivery", self.prefix)

    def new(self) -> str:
        case_id = f"{self.prefix}{uuid.uuid4().hex[:12].upper()}"
        self.ids.append(case_id)
        return case_id

    def code(self, name: str) -> str:
        """A department or office code no other test (or run) uses."""
        return f"IT{self.tag}-{name}"


@pytest.fixture
async def cases(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[Cases]:
    made = Cases(sessions)
    async with made.emitted:
        yield made
    await made.emitted.discard()
    if made.ids:
        async with unit_of_work(sessions) as session:
            await session.execute(
                delete(models.ratings).where(models.ratings.c.case_id.in_(made.ids))
            )
            await session.execute(
                delete(models.results).where(models.results.c.case_id.in_(made.ids))
            )


def decision(
    case_id: str,
    *,
    department: str,
    level: Level | None,
    intake_office: str | None,
    denied: bool = False,
    method: DeliveryMethod = DeliveryMethod.electronic,
) -> CaseApproved | CaseDenied:
    fields: dict[str, Any] = {
        "case_id": case_id,
        "department": department,
        "decided_at": datetime.now(UTC),
        "item": ItemSnapshot(
            code="MKT-0001",
            name="食品经营许可",
            instant=False,
            time_limit_days=5,
            result_kind="licence",
            e_license=True,
        ),
        "delivery_method": method,
        "intake_office": intake_office,
        "level": level,
        "applicant_name": "海城湖滨餐饮有限公司",
        "applicant_id_number": "91310000MA1FL8TQ4X",
    }
    if denied:
        return CaseDenied(
            **fields, reason="场所不符合要求", legal_basis="《食品经营许可管理办法》第十条"
        )
    return CaseApproved(**fields)


def envelope_of(event: CaseApproved | CaseDenied) -> Envelope:
    """A fresh event id every time: a repeated decision, not a redelivered record."""
    return Envelope(
        type="gov.case.denied.v1" if isinstance(event, CaseDenied) else "gov.case.approved.v1",
        source="/tongban/approval",
        subject=event.case_id,
        data=event.model_dump(mode="json"),
    )


async def apply(
    sessions: async_sessionmaker[AsyncSession],
    delivery: Delivery,
    event: CaseApproved | CaseDenied,
) -> None:
    async with unit_of_work(sessions) as session:
        await handlers.issue_and_deliver(session, envelope_of(event), event, delivery=delivery)


async def rate(
    sessions: async_sessionmaker[AsyncSession],
    delivery: Delivery,
    case_id: str,
    rating: Rating,
    comment: str | None = None,
) -> CaseRated:
    async with unit_of_work(sessions) as session:
        return await handlers.rate(
            session, delivery=delivery, case_id=case_id, rating=rating, comment=comment
        )


async def test_a_decision_applied_twice_issues_one_result_and_one_licence(
    sessions: async_sessionmaker[AsyncSession], delivery: Delivery, cases: Cases
) -> None:
    case_id = cases.new()
    department = cases.code("MKT")
    approved = decision(
        case_id, department=department, level=Level.district, intake_office=cases.code("DC")
    )
    await apply(sessions, delivery, approved)
    await apply(sessions, delivery, approved)  # same decision, another event id

    async with sessions() as session:
        r = models.results.c
        rows = (
            await session.execute(select(models.results).where(r.department == department))
        ).all()
    assert len(rows) == 1
    (row,) = rows
    assert (row.case_id, row.status, row.level, row.intake_office) == (
        case_id,
        "closed",
        "district",
        cases.code("DC"),
    )
    assert row.license_id is not None and row.license_id.startswith("EL-MKT-0001-")
    async with sessions() as session:
        licence = await queries.verify_license(session, row.license_id, row.sha256)
    assert licence.valid and licence.case_id == case_id
    # One result, so one set of delivery events, in order.
    assert await cases.emitted.types(case_id) == [
        "gov.case.result_issued.v1",
        "gov.case.delivered.v1",
        "gov.case.closed.v1",
    ]


async def test_a_decision_without_a_level_stores_none(
    sessions: async_sessionmaker[AsyncSession], delivery: Delivery, cases: Cases
) -> None:
    case_id = cases.new()
    await apply(
        sessions,
        delivery,
        decision(case_id, department=cases.code("MKT"), level=None, intake_office=None),
    )
    await rate(sessions, delivery, case_id, Rating.basic)
    async with sessions() as session:
        result_level = (
            await session.execute(
                select(models.results.c.level).where(models.results.c.case_id == case_id)
            )
        ).scalar_one()
        rating_level = (
            await session.execute(
                select(models.ratings.c.level).where(models.ratings.c.case_id == case_id)
            )
        ).scalar_one()
    assert result_level is None and rating_level is None


async def test_one_rating_per_case_bound_to_case_office_department_and_level(
    sessions: async_sessionmaker[AsyncSession], delivery: Delivery, cases: Cases
) -> None:
    case_id = cases.new()
    department, office = cases.code("SOC"), cases.code("SC")
    await apply(
        sessions,
        delivery,
        decision(case_id, department=department, level=Level.street, intake_office=office),
    )
    rated = await rate(sessions, delivery, case_id, Rating.dissatisfied, "等了很久")
    assert rated.rating is Rating.dissatisfied
    assert rated.rated_at.utcoffset() == timedelta(hours=8)

    with pytest.raises(Refused) as caught:
        await rate(sessions, delivery, case_id, Rating.very_satisfied)
    assert (caught.value.refusal.status, caught.value.refusal.code) == (409, "already_rated")

    async with sessions() as session:
        g = models.ratings.c
        rows = (await session.execute(select(models.ratings).where(g.case_id == case_id))).all()
    assert len(rows) == 1
    (row,) = rows
    assert (row.rating, row.comment, row.department, row.intake_office, row.level) == (
        "dissatisfied",
        "等了很久",
        department,
        office,
        "street",
    )
    assert row.item_code == "MKT-0001"
    # The refused second rating emitted nothing.
    assert (await cases.emitted.types(case_id)).count("gov.case.rated.v1") == 1


async def test_a_counter_pickup_result_is_rated_only_once_collected(
    sessions: async_sessionmaker[AsyncSession], delivery: Delivery, cases: Cases
) -> None:
    case_id = cases.new()
    office = cases.code("DC")
    await apply(
        sessions,
        delivery,
        decision(
            case_id,
            department=cases.code("MKT"),
            level=Level.district,
            intake_office=office,
            method=DeliveryMethod.counter_pickup,
        ),
    )
    with pytest.raises(Refused) as caught:
        await rate(sessions, delivery, case_id, Rating.satisfied)
    assert caught.value.refusal.code == "not_delivered"
    async with unit_of_work(sessions) as session:
        await handlers.pickup(session, delivery=delivery, case_id=case_id, office_code=office)
    await rate(sessions, delivery, case_id, Rating.satisfied)


# -- statistics -------------------------------------------------------------------------------


def counts(row: RatingStatsRow) -> tuple[int, int, int, int, int, int, float, int]:
    return (
        row.total,
        row.very_satisfied,
        row.satisfied,
        row.basic,
        row.dissatisfied,
        row.very_dissatisfied,
        row.satisfaction_rate,
        row.bad,
    )


def mine(rows: list[RatingStatsRow], keys: set[str]) -> list[RatingStatsRow]:
    return [row for row in rows if row.key in keys]


async def stats(
    sessions: async_sessionmaker[AsyncSession],
    grouping: RatingGrouping,
    period: RatedPeriod = ALL_TIME,
) -> list[RatingStatsRow]:
    async with sessions() as session:
        return await queries.rating_stats(session, grouping, period)


async def test_statistics_by_department_office_and_level(
    sessions: async_sessionmaker[AsyncSession], delivery: Delivery, cases: Cases
) -> None:
    dept_a, dept_b, dept_c = cases.code("A"), cases.code("B"), cases.code("C")
    office_1, office_2 = cases.code("O1"), cases.code("O2")
    plan: list[tuple[str, Level, str, bool, Rating]] = [
        (dept_a, Level.district, office_1, False, Rating.very_satisfied),
        (dept_a, Level.district, office_1, False, Rating.satisfied),
        (dept_a, Level.district, office_1, True, Rating.dissatisfied),
        (dept_b, Level.municipal, office_2, False, Rating.very_dissatisfied),
        (dept_b, Level.municipal, office_2, True, Rating.basic),
        (dept_c, Level.street, office_1, False, Rating.satisfied),
    ]
    rated: list[CaseRated] = []
    for department, level, office, denied, rating in plan:
        case_id = cases.new()
        event = decision(
            case_id, department=department, level=level, intake_office=office, denied=denied
        )
        await apply(sessions, delivery, event)
        rated.append(await rate(sessions, delivery, case_id, rating))

    by_department = mine(await stats(sessions, RatingGrouping.department), {dept_a, dept_b, dept_c})
    assert [row.key for row in by_department] == [dept_a, dept_b, dept_c]  # sorted by key
    assert [counts(row) for row in by_department] == [
        (3, 1, 1, 0, 1, 0, 0.6667, 1),
        (2, 0, 0, 1, 0, 1, 0.0, 1),
        (1, 0, 1, 0, 0, 0, 1.0, 0),
    ]

    by_office = mine(await stats(sessions, RatingGrouping.office), {office_1, office_2})
    assert [(row.key, counts(row)) for row in by_office] == [
        (office_1, (4, 1, 2, 0, 1, 0, 0.75, 1)),
        (office_2, (2, 0, 0, 1, 0, 1, 0.0, 1)),
    ]

    # Levels are shared by every department in the schema: count only this test's ratings with
    # the very statement the endpoint runs, narrowed to this test's departments.
    r = models.ratings.c
    level_query = stats_query(RatingGrouping.level, ALL_TIME).where(
        r.department.in_([dept_a, dept_b, dept_c])
    )
    async with sessions() as session:
        by_level = [
            RatingStatsRow.model_validate(m)
            for m in (await session.execute(level_query)).mappings()
        ]
    assert [(row.key, counts(row)) for row in by_level] == [
        ("district", (3, 1, 1, 0, 1, 0, 0.6667, 1)),
        ("municipal", (2, 0, 0, 1, 0, 1, 0.0, 1)),
        ("street", (1, 0, 1, 0, 0, 0, 1.0, 0)),
    ]
    # ...and through the handler, the levels hold at least this test's ratings.
    handler_levels = {row.key: row for row in await stats(sessions, RatingGrouping.level)}
    assert handler_levels["district"].total >= 3
    assert handler_levels["street"].total >= 1

    # The period is in city-local days on rated_at, both ends included.
    days = {moment.astimezone(CITY_TZ).date() for moment in (e.rated_at for e in rated)}
    first, last = min(days), max(days)
    within = mine(
        await stats(sessions, RatingGrouping.department, rated_period(first, last)),
        {dept_a, dept_b, dept_c},
    )
    assert [row.total for row in within] == [3, 2, 1]
    before = mine(
        await stats(
            sessions,
            RatingGrouping.department,
            rated_period(first - timedelta(days=30), first - timedelta(days=1)),
        ),
        {dept_a, dept_b, dept_c},
    )
    assert before == []
    after = mine(
        await stats(
            sessions, RatingGrouping.department, rated_period(last + timedelta(days=1), None)
        ),
        {dept_a, dept_b, dept_c},
    )
    assert after == []


async def test_the_database_does_the_counting(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """PostgreSQL's plan of the statistics groups in the database: one row per key comes back."""
    statement = stats_query(RatingGrouping.level, rated_period(None, None)).compile(
        dialect=postgresql.dialect(),  # type: ignore[no-untyped-call]
        compile_kwargs={"literal_binds": True},
    )
    async with sessions() as session:
        plan = "\n".join(line for (line,) in await session.execute(text(f"EXPLAIN {statement}")))
    assert "Aggregate" in plan, plan


async def test_the_statistics_endpoint_answers_from_the_database(
    sessions: async_sessionmaker[AsyncSession], delivery: Delivery, cases: Cases
) -> None:
    department, office = cases.code("REST"), cases.code("RO")
    case_id = cases.new()
    await apply(
        sessions,
        delivery,
        decision(case_id, department=department, level=Level.municipal, intake_office=office),
    )
    rated = await rate(sessions, delivery, case_id, Rating.very_satisfied)
    day = rated.rated_at.astimezone(CITY_TZ).date().isoformat()

    # ASGITransport runs no lifespan: the app's own pool serves the request, nothing else starts.
    app = create_app(DeliverySettings())
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://delivery", headers=auth_headers("operator")
        ) as client:
            default = await client.get("/v1/ratings/stats", params={"from": day, "to": day})
            by_office = await client.get("/v1/ratings/stats", params={"by": "office"})
            by_level = await client.get("/v1/ratings/stats", params={"by": "level"})
    finally:
        await app.state.runtime.engine.dispose()
    assert default.status_code == 200, default.text
    assert [row for row in default.json() if row["key"] == department] == [
        {
            "key": department,
            "total": 1,
            "very_satisfied": 1,
            "satisfied": 0,
            "basic": 0,
            "dissatisfied": 0,
            "very_dissatisfied": 0,
            "satisfaction_rate": 1.0,
            "bad": 0,
        }
    ]
    assert [row["total"] for row in by_office.json() if row["key"] == office] == [1]
    assert "municipal" in {row["key"] for row in by_level.json()}
