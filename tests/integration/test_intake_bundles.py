"""Waiting members of a bundle on the real PostgreSQL (DESIGN.md §8): released once however
many consumers settle the bundle at the same moment, with the prerequisite's licence attached,
and ended (transitively) when a prerequisite ends.

The `intake` schema is shared with whatever else runs on the stack: every test makes its own
case and bundle ids, holds its events back from the stack's relay and removes its rows.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.common import CaseStatus, Channel
from services.common import migrations
from services.common.db import unit_of_work
from services.common.service import ServiceRuntime, ServiceSettings
from services.intake import handlers, models
from tests.outbox_capture import OutboxCapture
from tests.unit.catalog_data import application, index
from tests.unit.test_intake_bundles import raw_catalog

pytestmark = pytest.mark.integration

INDEX = index(raw_catalog())
NOW = datetime(2026, 6, 15, 9, tzinfo=UTC)


class Bundle:
    """One bundle of a test: its members' rows, its prerequisite's licence, its events."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.tag = uuid.uuid4().hex[:10].upper()
        self.prefix = f"IT-B-{self.tag}-"
        self.bundle_id = f"{self.prefix}BUNDLE"
        self.emitted = OutboxCapture(sessions, "intake", self.prefix)
        self.sessions = sessions
        self.case_ids: list[str] = []

    def case(self, name: str) -> str:
        self.case_ids.append(f"{self.prefix}{name}")
        return self.case_ids[-1]

    async def create(self, *members: tuple[str, str, CaseStatus, list[str]]) -> None:
        """The bundle and its members: (case id, item code, status, after)."""
        async with unit_of_work(self.sessions) as session:
            await session.execute(
                models.bundles.insert().values(
                    bundle_id=self.bundle_id,
                    bundle_code="B-SHOP",
                    bundle_name="开店一件事",
                    status="in_progress",
                    channel="online",
                    office_code=None,
                    applicant={},
                    answers={},
                    delivery={"method": "electronic"},
                    excluded=[],
                    time_limit_days=10,
                    lead="M-MKT",
                )
            )
            for case_id, item_code, status, after in members:
                app = application(item_code, channel=Channel.online, materials=("A",))
                row = handlers.case_row(case_id, app, status, [], NOW)
                row |= {"bundle_id": self.bundle_id, "bundle_code": "B-SHOP", "after": after}
                await session.execute(models.cases.insert().values(row))

    async def licence(self, case_id: str, license_type: str = "biz") -> str:
        license_id = f"{case_id}-LIC"
        async with unit_of_work(self.sessions) as session:
            await session.execute(
                models.licenses.insert().values(
                    license_id=license_id,
                    license_type=license_type,
                    holder_id_number="X",
                    case_id=case_id,
                    issued_at=NOW,
                )
            )
        return license_id

    async def status(self, case_id: str) -> Any:
        async with self.sessions() as session:
            return (
                await session.execute(
                    select(models.cases.c.status, models.cases.c.application).where(
                        models.cases.c.case_id == case_id
                    )
                )
            ).one()

    async def remove(self) -> None:
        async with unit_of_work(self.sessions) as session:
            await session.execute(
                delete(models.licenses).where(models.licenses.c.case_id.in_(self.case_ids))
            )
            await session.execute(
                delete(models.cases).where(models.cases.c.case_id.in_(self.case_ids))
            )
            await session.execute(
                delete(models.bundles).where(models.bundles.c.bundle_id == self.bundle_id)
            )


@pytest.fixture
async def runtime(settings: ServiceSettings) -> AsyncIterator[ServiceRuntime]:
    await asyncio.to_thread(migrations.upgrade, "intake", settings.migration_url)
    made = ServiceRuntime(settings.model_copy(update={"service": "intake"}))
    yield made
    await made.engine.dispose()


@pytest.fixture
async def bundle(
    runtime: ServiceRuntime, sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Bundle]:
    made = Bundle(sessions)
    async with made.emitted:
        yield made
    await made.emitted.discard()
    await made.remove()


async def settle(runtime: ServiceRuntime, bundle: Bundle) -> None:
    async with unit_of_work(runtime.sessions) as session:
        await handlers.settle_bundle(
            session, runtime=runtime, index=INDEX, bundle_id=bundle.bundle_id
        )


async def test_a_waiting_member_is_released_once_with_its_prerequisites_licence(
    runtime: ServiceRuntime, bundle: Bundle
) -> None:
    issuer, taker = bundle.case("ISSUER"), bundle.case("TAKER")
    await bundle.create(
        (issuer, "ONL-E", CaseStatus.approved, []),
        (taker, "DEL-D", CaseStatus.waiting, [issuer]),
    )
    await settle(runtime, bundle)  # approved, but its licence is not in the library yet
    assert (await bundle.status(taker)).status == "waiting"
    license_id = await bundle.licence(issuer)
    # Two consumers (the timeline's, the library's) settle the bundle at the same moment.
    await asyncio.gather(*(settle(runtime, bundle) for _ in range(4)))
    await settle(runtime, bundle)
    submitted = [e for e in await bundle.emitted.events() if e.case_id == taker]
    assert [e.type for e in submitted] == ["gov.case.submitted.v1"]
    event = submitted[0].data
    assert event["bundle_id"] == bundle.bundle_id and event["bundle_code"] == "B-SHOP"
    materials = {m["code"]: m.get("e_license_id") for m in event["application"]["materials"]}
    assert materials == {"A": None, "B": license_id}
    row = await bundle.status(taker)
    assert row.status == "submitted" and row.application == event["application"]


async def test_an_ended_prerequisite_ends_the_chain_below_it(
    runtime: ServiceRuntime, bundle: Bundle
) -> None:
    first, second, third = bundle.case("FIRST"), bundle.case("SECOND"), bundle.case("THIRD")
    await bundle.create(
        (first, "ONL-E", CaseStatus.denied, []),
        (second, "DEL-D", CaseStatus.waiting, [first]),
        (third, "MUN-E", CaseStatus.waiting, [second]),
    )
    await settle(runtime, bundle)
    await settle(runtime, bundle)
    ended = [(e.case_id, e.type, e.data["reason"]) for e in await bundle.emitted.events()]
    assert sorted(ended) == [
        (second, "gov.case.withdrawn.v1", "prerequisite_ended"),
        (third, "gov.case.withdrawn.v1", "prerequisite_ended"),
    ]
    for case_id in (second, third):
        assert (await bundle.status(case_id)).status == "withdrawn"
