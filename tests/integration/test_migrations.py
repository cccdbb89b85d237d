"""Each service migrates its own schema with its own Alembic version table."""

from __future__ import annotations

import asyncio
import sys
import uuid

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

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
        await asyncio.to_thread(migrations.upgrade, service, settings.migration_url)
        await asyncio.to_thread(migrations.upgrade, service, settings.migration_url)  # no-op
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


async def test_replicas_starting_together_migrate_one_at_a_time(
    settings: CommonSettings, engine: AsyncEngine
) -> None:
    """N processes of a service start at once on a fresh database: every one migrates
    without error (an advisory lock serializes them), and the schema ends at head once."""
    name = f"tongban_mig_{uuid.uuid4().hex[:8]}"
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = settings.database_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        # Separate processes, as replicas are (Alembic's context is global to a process).
        script = f"from services.common import migrations; migrations.upgrade('intake', {url!r})"
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", script, stderr=asyncio.subprocess.PIPE
            )
            for _ in range(4)
        ]
        results = [await p.communicate() for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0], [r[1][-800:] for r in results]
        fresh = create_async_engine(url)
        try:
            async with fresh.connect() as conn:
                versions = (
                    await conn.execute(text('SELECT version_num FROM "intake".alembic_version'))
                ).all()
        finally:
            await fresh.dispose()
        head = ScriptDirectory.from_config(
            migrations.alembic_config("intake", url)
        ).get_current_head()
        assert [v[0] for v in versions] == [head]
    finally:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
