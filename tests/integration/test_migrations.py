"""Each service migrates its own schema with its own Alembic version table."""

from __future__ import annotations

import asyncio

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.cli.main import SERVICES
from services.common import migrations
from services.common.settings import CommonSettings

pytestmark = pytest.mark.integration


async def tables(engine: AsyncEngine, schema: str) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
            {"s": schema},
        )
        return {r[0] for r in rows}


async def test_every_service_migrates_its_own_schema(
    settings: CommonSettings, engine: AsyncEngine
) -> None:
    for service in SERVICES:
        # Alembic's env runs its own event loop; keep it off ours.
        await asyncio.to_thread(migrations.upgrade, service, settings.database_url)
        await asyncio.to_thread(migrations.upgrade, service, settings.database_url)  # no-op
    for service in SERVICES:
        assert {"alembic_version", "outbox", "inbox"} <= await tables(engine, service)
        async with engine.connect() as conn:
            version = (
                await conn.execute(text(f'SELECT version_num FROM "{service}".alembic_version'))
            ).scalar_one()
            trigger = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM information_schema.triggers "
                        "WHERE event_object_schema = :s AND trigger_name = 'outbox_notify'"
                    ),
                    {"s": service},
                )
            ).scalar_one()
        assert (
            version
            == ScriptDirectory.from_config(
                migrations.alembic_config(service, settings.database_url)
            ).get_current_head()
        )
        assert trigger == 1
    assert "alembic_version" not in await tables(engine, "public")
