"""Alembic per service: each service's migrations live in `services/<name>/migrations` and
record their version in `<schema>.alembic_version`, so services migrate independently.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

SERVICES_DIR = Path(__file__).resolve().parent.parent
RUNTIME_VERSIONS = Path(__file__).resolve().parent / "migrations_runtime"


def alembic_config(service: str, database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SERVICES_DIR / service / "migrations"))
    # The runtime tables' migration is shared by all services; theirs follow it.
    config.set_main_option("path_separator", "os")
    config.set_main_option(
        "version_locations",
        os.pathsep.join(
            [str(RUNTIME_VERSIONS), str(SERVICES_DIR / service / "migrations" / "versions")]
        ),
    )
    config.set_main_option("sqlalchemy.url", database_url)
    config.attributes["schema"] = service
    return config


def upgrade(service: str, database_url: str, revision: str = "head") -> None:
    """Bring one service's schema to `revision` (blocking; call before serving)."""
    command.upgrade(alembic_config(service, database_url), revision)


def run_env(context: Any, target_metadata: MetaData | None = None) -> None:
    """Body of every service's `migrations/env.py`: online, async, schema-scoped."""
    config = context.config
    schema = config.attributes.get("schema") or config.get_main_option("schema")
    url = config.get_main_option("sqlalchemy.url")

    def do_run(connection: Connection) -> None:
        # Replicas of a service start together and all migrate: one at a time (the lock is
        # held to the end of this transaction); the next finds the schema at head.
        connection.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
            {"key": f"tongban-migrate:{schema}"},
        )
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table_schema=schema,
            include_schemas=False,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def run_async() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(do_run)
        finally:
            await engine.dispose()

    asyncio.run(run_async())
