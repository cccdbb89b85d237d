"""Least privilege in PostgreSQL, on the real server: a service's run-time role can append to
its audit trail but neither rewrite it nor switch its guard off, and reads no other service's
tables; and what PostgreSQL refuses from it never lands in the server's log with the personal
data it carried."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.cli.main import SERVICES
from services.common import migrations
from services.common.audit import append
from services.common.db import asyncpg_dsn, make_sessionmaker, unit_of_work
from services.common.settings import CommonSettings
from tests.conftest import RUN_DIR, eventually

pytestmark = pytest.mark.integration

ID_NUMBER = "11010119900307123X"
PHONE = "13912345678"


def runtime_url(service: str) -> str:
    """The service's run-time role, as deploy/local/services.sh gives it to the service."""
    url = os.environ.get(f"TONGBAN_{service.upper()}_DATABASE_URL")
    if not url:
        pytest.skip(f"TONGBAN_{service.upper()}_DATABASE_URL not set (single-role database)")
    return url


async def migrated(settings: CommonSettings, service: str, url: str) -> None:
    """The schema at head, as its owner, with the run-time role granted (tongban migrate)."""
    role = migrations.role_of(url)
    assert await asyncio.to_thread(migrations.migrate, service, settings.migration_url, role)


@pytest.fixture
async def service_engine(
    settings: CommonSettings, request: pytest.FixtureRequest
) -> AsyncIterator[AsyncEngine]:
    service: str = request.param
    url = runtime_url(service)
    await migrated(settings, service, url)
    engine = create_async_engine(url)
    yield engine
    await engine.dispose()


async def refused(engine: AsyncEngine, statement: str) -> str:
    """Run one statement as the engine's role; it must fail for lack of rights: the reason."""
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as conn:
            await conn.execute(text(statement))
    assert isinstance(caught.value.orig, Exception)
    reason = str(caught.value.orig)
    assert "permission denied" in reason or "must be owner" in reason, reason
    return reason


@pytest.mark.parametrize("service_engine", SERVICES, indirect=True)
async def test_the_service_role_appends_audit_rows_but_cannot_switch_the_trail_off(
    service_engine: AsyncEngine, engine: AsyncEngine, request: pytest.FixtureRequest
) -> None:
    service = request.node.callspec.params["service_engine"]
    others = [s for s in SERVICES if s != service]
    table = f'"{service}".audit'
    # A service started with its own role alone sees its schema is current (and so starts
    # without migrating, which it could not).
    assert await asyncio.to_thread(
        migrations.is_current, service, service_engine.url.render_as_string(hide_password=False)
    )

    # What the service does with its trail: append (the chain reads its tail first).
    async with unit_of_work(make_sessionmaker(service_engine)) as session:
        await append(
            session,
            service,
            actor="test-least-privilege",
            role="admin",
            scope=None,
            action="test.append",
            case_id=None,
        )

    # What it must not: rewrite rows with the trigger off, or take the guard away.
    await refused(service_engine, "SET session_replication_role = replica")
    await refused(service_engine, f"UPDATE {table} SET actor = 'x'")
    await refused(service_engine, f"DELETE FROM {table}")
    await refused(service_engine, f"TRUNCATE {table}")
    await refused(service_engine, f"ALTER TABLE {table} DISABLE TRIGGER audit_append_only")
    await refused(service_engine, f"DROP TRIGGER audit_append_only ON {table}")
    await refused(service_engine, f"DROP TABLE {table}")
    await refused(service_engine, f'CREATE TABLE "{service}".extra (id int)')
    await refused(service_engine, f"UPDATE \"{service}\".alembic_version SET version_num = 'x'")
    # Nor read another service's tables.
    for other in others:
        await refused(service_engine, f'SELECT count(*) FROM "{other}".outbox')

    async with service_engine.connect() as conn:
        role = (
            await conn.execute(
                text(
                    "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles "
                    "WHERE rolname = current_user"
                )
            )
        ).one()
        owned = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = ANY(:schemas) AND c.relowner = "
                    "(SELECT oid FROM pg_roles WHERE rolname = current_user)"
                ),
                {"schemas": list(SERVICES)},
            )
        ).scalar_one()
    assert tuple(role) == (False, False, False, False)
    assert owned == 0

    # The guard is still on and the row is still there, seen by the administrator.
    async with engine.connect() as conn:
        enabled = (
            await conn.execute(
                text(
                    "SELECT tgenabled::text FROM pg_trigger WHERE tgname = 'audit_append_only' "
                    "AND tgrelid = CAST(:table AS regclass)"
                ),
                {"table": table},
            )
        ).scalar_one()
        actors = (
            await conn.execute(
                text(f"SELECT count(*) FROM {table} WHERE actor = 'test-least-privilege'")
            )
        ).scalar_one()
    assert enabled == "O"
    assert actors >= 1


async def test_the_schema_owner_is_no_superuser(settings: CommonSettings) -> None:
    if settings.migration_url == settings.database_url:
        pytest.skip("TONGBAN_MIGRATION_DATABASE_URL not set (single-role database)")
    conn = await asyncpg.connect(asyncpg_dsn(settings.migration_url))
    try:
        row = await conn.fetchrow(
            "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user"
        )
        owners = await conn.fetch(
            "SELECT nspname, pg_get_userbyid(nspowner) AS owner FROM pg_namespace "
            "WHERE nspname = ANY($1::text[])",
            list(SERVICES),
        )
    finally:
        await conn.close()
    assert row is not None and (row["rolsuper"], row["rolcreaterole"]) == (False, False)
    assert {r["nspname"]: r["owner"] for r in owners} == {
        s: migrations.role_of(settings.migration_url) for s in SERVICES
    }


async def test_values_postgres_refuses_leave_no_personal_data_in_its_log(
    settings: CommonSettings,
) -> None:
    """A NUL in JSON, a value too long for its column, a number out of range: PostgreSQL
    refuses them, as parameters and as literals. Its log (the embedded server's, where
    README says it is) holds none of the ID numbers and phones they carried."""
    log_file = RUN_DIR / "logs" / "postgres.log"
    if not log_file.exists():
        pytest.skip(f"no embedded PostgreSQL log at {log_file} (external server)")
    url = runtime_url("intake")
    await migrated(settings, "intake", url)
    start = log_file.stat().st_size  # what this test makes the server write comes after

    def written() -> str:
        with log_file.open("rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace")

    person = f'"id_number": "{ID_NUMBER}", "phone": "{PHONE}"'
    with_nul = "{" + person + ', "note": "\\u0000"}'
    too_long = f"{ID_NUMBER} {PHONE} " * 4
    insert = (
        "INSERT INTO intake.audit (seq, at, actor, role, action, detail, prev_hash, hash) "
        "VALUES (-1, now(), 'a', 'r', {action}, {detail}, 'h', 'h')"
    )
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        attempts = [
            (insert.format(action="'x'", detail="$1::jsonb"), [with_nul]),
            (insert.format(action="'x'", detail=f"'{with_nul}'::jsonb"), []),
            (insert.format(action="$1", detail="'{}'"), [too_long]),
            (insert.format(action=f"'{too_long}'", detail="'{}'"), []),
            (insert.format(action="'x'", detail=f"'{{{person}'"), []),
            ("SELECT $1::text::int", [ID_NUMBER[:-1] + PHONE]),
            (f"SELECT '{ID_NUMBER[:-1]}{PHONE}'::int", []),
        ]
        for statement, args in attempts:
            with pytest.raises(asyncpg.PostgresError):
                await conn.execute(statement, *args)
    finally:
        await conn.close()

    # A failed login is logged (FATAL): once its line is in the file, everything the
    # refusals above could have logged is there too. So the log is really being written.
    marker = f"nobody_{uuid.uuid4().hex[:12]}"
    with pytest.raises(asyncpg.PostgresError):
        await asyncpg.connect(asyncpg_dsn(url).replace(migrations.role_of(url) or "", marker, 1))
    log = await eventually(
        lambda: (t := written()) and marker in t and t,
        what=f"the failed login of {marker} in {log_file}",
    )
    for secret in (ID_NUMBER, ID_NUMBER[:-1], PHONE):
        assert secret not in log
