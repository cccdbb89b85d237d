"""Alembic per service: each service's migrations live in `services/<name>/migrations` and
record their version in `<schema>.alembic_version`, so services migrate independently.

Least privilege: the migrations run as the role that owns the schemas (`tongban_owner`,
TONGBAN_MIGRATION_DATABASE_URL); after each upgrade `grant_runtime` gives the service's run-time
role (`tongban_<service>`) the rows of its own tables and nothing more: on the audit table only
INSERT and SELECT, so no one at the service's level can rewrite or delete the trail, nor switch
its trigger off (that needs the owner). The grants are statements run after the upgrade, not
Alembic revisions, so every service's chain stays its own and they are re-applied on each run.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

T = TypeVar("T")

log = logging.getLogger(__name__)

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


def run_in_transaction(database_url: str, work: Callable[[Connection], T]) -> T:
    """`work` on a connection of its own, in one transaction (blocking: migrations run
    before a service serves, or from the command line)."""

    async def run() -> T:
        engine = create_async_engine(database_url)
        try:
            async with engine.begin() as connection:
                return await connection.run_sync(work)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def upgrade(service: str, database_url: str, revision: str = "head") -> None:
    """Bring one service's schema to `revision` (blocking; call before serving)."""
    command.upgrade(alembic_config(service, database_url), revision)


def is_current(service: str, database_url: str) -> bool:
    """Is the service's schema at its newest revision? Needs only SELECT on its
    `alembic_version`, so a service logging in as its run-time role can tell whether it may
    start without migrating."""
    heads = set(ScriptDirectory.from_config(alembic_config(service, database_url)).get_heads())

    def current(connection: Connection) -> set[str]:
        context = MigrationContext.configure(connection, opts={"version_table_schema": service})
        return set(context.get_current_heads())

    return run_in_transaction(database_url, current) == heads


def role_of(database_url: str) -> str | None:
    """The role a URL logs in as."""
    return make_url(database_url).username


def grant_runtime(service: str, database_url: str, role: str) -> bool:
    """Give `role` what service `service` needs at run time in its own schema, as the schema's
    owner (`database_url`), idempotently; ALTER DEFAULT PRIVILEGES makes the tables of later
    migrations follow. False (and nothing granted) when the role does not exist."""
    schema = f'"{service}"'
    grantee = '"' + role.replace('"', '""') + '"'

    def do_grant(connection: Connection) -> bool:
        if not connection.execute(
            text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": role}
        ).scalar():
            return False
        connection.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
            {"key": f"tongban-migrate:{service}"},
        )
        tables = {
            name
            for (name,) in connection.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = :schema"),
                {"schema": service},
            )
        }
        statements = [
            f"GRANT USAGE ON SCHEMA {schema} TO {grantee}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {grantee}",
            f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {grantee}",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} "
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {grantee}",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} "
            f"GRANT USAGE, SELECT ON SEQUENCES TO {grantee}",
        ]
        # The trail is append-only for the service (the chain reads its tail); the
        # migrations' bookkeeping is read-only (to check the schema is current).
        if "audit" in tables:
            statements.append(
                f"REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER "
                f"ON {schema}.audit FROM {grantee}"
            )
        if "alembic_version" in tables:
            statements.append(
                f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {schema}.alembic_version "
                f"FROM {grantee}"
            )
        for statement in statements:
            connection.execute(text(statement))
        return True

    return run_in_transaction(database_url, do_grant)


def migrate(service: str, migration_url: str, runtime_role: str | None) -> bool:
    """Upgrade the schema as its owner, then grant the run-time role (when there is one and
    it is not the owner itself). True when the role was granted."""
    upgrade(service, migration_url)
    if not runtime_role or runtime_role == role_of(migration_url):
        return False
    granted = grant_runtime(service, migration_url, runtime_role)
    if not granted:
        log.warning("runtime role %s does not exist: nothing granted on %s", runtime_role, service)
    return granted


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

    run_in_transaction(url, do_run)
