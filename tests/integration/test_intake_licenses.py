"""intake's copy of the licence library on the real PostgreSQL: the license.v1 handlers in
either order, and the reads that reuse and the library endpoint make of it.

The `intake` schema is shared with whatever else runs on the stack: every test makes its own
licence ids and holders, and removes its rows when it ends.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.common import Material
from contracts.events import LicenseIssued, LicenseRevoked
from contracts.rest import LicenseStatus
from services.cli.applicants import resident_id
from services.common import migrations
from services.common.db import unit_of_work
from services.common.envelope import Envelope
from services.common.logs import mask_id_number
from services.common.principals import Principal, Role
from services.common.service import ServiceSettings
from services.intake import handlers, models, queries
from tests.unit.catalog_data import application

pytestmark = pytest.mark.integration

ISSUED_AT = datetime(2026, 6, 1, 9, tzinfo=UTC)


class Library:
    """Licence ids and a holder made by one test, removed at its end."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:10].upper()
        self.holder = resident_id(random.Random(self.tag))
        self.ids: list[str] = []

    def new_id(self) -> str:
        self.ids.append(f"EL-IT-{self.tag}-{len(self.ids)}")
        return self.ids[-1]

    def issued(self, license_id: str, **fields: object) -> LicenseIssued:
        values: dict[str, object] = {
            "license_id": license_id,
            "license_type": "IT-PERMIT",
            "holder_id_number": self.holder.lower(),  # one holder however it was typed
            "case_id": f"IT-{self.tag}",
            "item_code": "IT-ITEM",
            "issued_at": ISSUED_AT,
            "sha256": "0" * 64,
        }
        return LicenseIssued.model_validate(values | fields)

    def revoked(self, license_id: str) -> LicenseRevoked:
        return LicenseRevoked(
            license_id=license_id,
            case_id=f"IT-{self.tag}",
            reason="commitment_breached",
            revoked_at=ISSUED_AT + timedelta(days=1),
        )


@pytest.fixture
async def library(
    settings: ServiceSettings, sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Library]:
    await asyncio.to_thread(migrations.upgrade, "intake", settings.migration_url)
    made = Library()
    yield made
    async with unit_of_work(sessions) as session:
        await session.execute(
            delete(models.licenses).where(models.licenses.c.license_id.in_(made.ids))
        )


def envelope(event: LicenseIssued | LicenseRevoked) -> Envelope:
    return Envelope(
        type=event.TYPE,
        source="/tongban/delivery",
        subject=event.license_id,
        data=event.model_dump(mode="json"),
    )


async def apply(
    sessions: async_sessionmaker[AsyncSession], *events: LicenseIssued | LicenseRevoked
) -> None:
    for event in events:
        async with unit_of_work(sessions) as session:
            if isinstance(event, LicenseIssued):
                await handlers.record_license_issued(session, envelope(event), event)
            else:
                await handlers.record_license_revoked(session, envelope(event), event)


async def row(sessions: async_sessionmaker[AsyncSession], license_id: str) -> object:
    async with sessions() as session:
        return (
            await session.execute(
                select(models.licenses).where(models.licenses.c.license_id == license_id)
            )
        ).one()


@pytest.mark.parametrize("revocation_first", [False, True])
async def test_a_revoked_licence_stays_revoked_whatever_arrives_first_or_again(
    sessions: async_sessionmaker[AsyncSession], library: Library, revocation_first: bool
) -> None:
    license_id = library.new_id()
    issued, revoked = library.issued(license_id), library.revoked(license_id)
    order = (revoked, issued) if revocation_first else (issued, revoked)
    await apply(sessions, *order, *order)  # each twice: a copy changes nothing
    stored = await row(sessions, license_id)
    assert stored.license_type == "IT-PERMIT"  # type: ignore[attr-defined]
    assert stored.holder_id_number == library.holder.upper()  # type: ignore[attr-defined]
    assert stored.revoked_at == revoked.revoked_at  # type: ignore[attr-defined]
    assert stored.revoke_reason == "commitment_breached"  # type: ignore[attr-defined]
    async with sessions() as session:
        (held,) = await queries.held_licenses(
            session, library.holder.upper(), Principal("op", Role.operator)
        )
    assert held.status is LicenseStatus.revoked
    assert held.holder_id_number == mask_id_number(library.holder.upper())


async def test_a_submission_reads_the_applicants_licences_and_those_it_names(
    sessions: async_sessionmaker[AsyncSession], library: Library
) -> None:
    own, foreign = library.new_id(), library.new_id()
    other_holder = resident_id(random.Random(foreign))
    await apply(
        sessions, library.issued(own), library.issued(foreign, holder_id_number=other_holder)
    )
    submitted = application("DEL-S", office="T11-SC", id_number=library.holder).model_copy(
        update={"materials": [Material(code="ID", e_license_id=foreign)]}
    )
    async with sessions() as session:
        found = {lic.license_id: lic for lic in await queries.library_for(session, submitted)}
        bare = submitted.model_copy(update={"materials": []})
        only_own = await queries.library_for(session, bare)
    assert set(found) == {own, foreign}
    assert found[foreign].holder_id_number == other_holder.upper()
    assert [lic.license_id for lic in only_own] == [own]


async def test_a_clerk_sees_only_the_applicants_of_their_office(
    sessions: async_sessionmaker[AsyncSession], library: Library
) -> None:
    await apply(sessions, library.issued(library.new_id()))
    clerk = Principal("clerk", Role.clerk, scope=f"IT-{library.tag}-OFFICE")
    nobody = Principal("clerk", Role.clerk, scope=None)
    async with sessions() as session:
        assert await queries.held_licenses(session, library.holder.upper(), clerk) == []
        assert await queries.held_licenses(session, library.holder.upper(), nobody) == []
