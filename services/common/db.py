"""Async SQLAlchemy on asyncpg: one pooled engine per process, one schema per service.

Every service keeps its tables in its own PostgreSQL schema (named after the service) and
never reads another's. The runtime tables (outbox, inbox) live beside the service's own.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from services.common.failures import AmbiguousCommits
from services.common.settings import CommonSettings


def make_engine(settings: CommonSettings, *, pool_size: int | None = None) -> AsyncEngine:
    return create_async_engine(
        settings.database_url,
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
        # No pre-ping: it costs a round trip per checkout on every transaction. A restarted
        # PostgreSQL leaves dead pooled connections behind; the first use of one fails as a
        # disconnect, SQLAlchemy then drops the whole pool, and the caller retries (consumers
        # retry the batch, REST answers 503 + Retry-After).
        pool_recycle=1800,
    )


def make_sessionmaker(
    engine: AsyncEngine, *, ambiguous_commit_rate: float = 0.0
) -> async_sessionmaker[AsyncSession]:
    """Sessions on the engine; `ambiguous_commit_rate` > 0 only in the fault suite."""
    # A class of its own per sessionmaker, so a fault injector never leaks into others.
    session_class = type("TongbanSession", (Session,), {})
    AmbiguousCommits(ambiguous_commit_rate).install(session_class)
    return async_sessionmaker(engine, expire_on_commit=False, sync_session_class=session_class)


@asynccontextmanager
async def unit_of_work(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One transaction: state changes and their outbox rows commit together or not at all.
    The deferred rows (`rows.defer_rows`: the outbox's and the writer's) go in last, in one
    statement; when nothing else ran, that statement is the whole transaction."""
    # Imported here: rows builds on this module's `driver_connection`.
    from services.common.rows import flush_deferred

    async with sessions() as session, session.begin():
        yield session
        # On asyncpg directly, one statement; commit's own flush finds nothing.
        await flush_deferred(session, last=True)


async def locked_row(session: AsyncSession, table: Table, **key: object) -> Any:
    """The row of `table` with primary key `key`, inserted bare (the other columns at their
    defaults) if it is not there yet, and locked (FOR UPDATE) until the transaction ends.

    The meeting point of events about one thing that arrive on several topics in any order
    (a bundle's, DESIGN.md §8): whichever comes first creates the row, and each then looks at
    the whole under the one lock, seeing everything the others committed."""
    await session.execute(pg_insert(table).values(**key).on_conflict_do_nothing())
    query = select(table).where(*(table.c[name] == value for name, value in key.items()))
    return (await session.execute(query.with_for_update())).one()


async def bundle_of(
    session: AsyncSession, members: Table, case_id: str, named: str | None
) -> str | None:
    """The bundle (DESIGN.md §8) a case event's case belongs to: the one the event names, or
    the one whose `gov.bundle.submitted.v1` listed it in the service's `members` table (an
    event from a producer that did not name it)."""
    if named is not None:
        return named
    # Every case event pays this read (almost always for nothing): on asyncpg directly.
    driver = await driver_connection(session)
    found: str | None = await driver.fetchval(
        f"SELECT bundle_id FROM {members.fullname} WHERE case_id = $1", case_id
    )
    return found


class Driver:
    """The session's asyncpg connection, for the runtime's statements (`driver_connection`).

    A connection found dead here (PostgreSQL restarted: no pre-ping) is invalidated, and the
    pool with it, as SQLAlchemy does when its own statements meet a disconnect: otherwise the
    dead connections would go back into the pool and every retry would take one again."""

    def __init__(self, connection: AsyncConnection, driver: asyncpg.Connection) -> None:
        self._connection = connection
        self._driver = driver

    async def execute(self, sql: str, *args: Any) -> str:
        return await self._run(self._driver.execute(sql, *args))  # type: ignore[no-any-return]

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self._run(self._driver.fetch(sql, *args))  # type: ignore[no-any-return]

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._run(self._driver.fetchval(sql, *args))

    async def _run(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except Exception as exc:
            await forget_if_dead(self._connection, exc)
            raise


def _is_disconnect(exc: BaseException) -> bool:
    if isinstance(exc, ValueError):  # asyncpg's refusal of a value: the data, not the link
        return False
    return isinstance(
        exc,
        OSError
        | ConnectionError
        | asyncpg.InterfaceError
        # The server's FATAL (backend terminated) arrived while the connection sat idle, and
        # the next statement met the protocol still consuming it: the link is as good as gone.
        | asyncpg.InternalClientError
        | asyncpg.PostgresConnectionError
        | asyncpg.exceptions.OperatorInterventionError,
    ) or (exc.__cause__ is not None and _is_disconnect(exc.__cause__))


async def forget_if_dead(connection: AsyncConnection, exc: BaseException) -> None:
    """After `exc` on `connection`: if the link is gone, never hand this connection (nor the
    pool's others, which died with the server) out again."""
    if not _is_disconnect(exc):
        return
    with contextlib.suppress(Exception):
        await connection.invalidate(exc if isinstance(exc, Exception) else None)
    with contextlib.suppress(Exception):
        await connection.engine.dispose(close=False)


async def driver_connection(session: AsyncSession, *, transaction: bool = True) -> Driver:
    """The asyncpg connection under `session`, inside the session's transaction (begun here if
    no statement began it yet), for the runtime's statements on every event's path (inbox,
    outbox): asyncpg's own prepared statements, without SQLAlchemy's compilation and greenlet
    hops, which cost as much CPU as the statements themselves. Handlers keep SQLAlchemy.

    The dialect begins its transaction lazily, at the first statement; a statement sent past
    it would run outside the transaction (autocommit). So the BEGIN is made here, the way the
    dialect makes it (`_start_transaction`: a private method, hence sqlalchemy < 2.2 in
    pyproject.toml; tests/integration/test_outbox.py proves a rollback takes both kinds of
    statement back).

    With `transaction=False`, no BEGIN: a statement joins the transaction if one began, and
    otherwise runs on its own (a read, or a unit of work's only write: one round trip, where
    BEGIN and COMMIT would make three); the session must then run no statement after it."""
    connection = await session.connection()
    try:
        raw = await connection.get_raw_connection()
        adapted: Any = raw.dbapi_connection
        if transaction and adapted._transaction is None:
            await adapted._start_transaction()
    except Exception as exc:
        await forget_if_dead(connection, exc)
        raise
    return Driver(connection, adapted._connection)


def outbox_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel that wakes a schema's outbox relay."""
    return f"tongban_outbox_{schema}"


def runtime_metadata(schema: str) -> tuple[MetaData, Table, Table]:
    """The outbox and inbox tables of one service schema.

    outbox: events written in the caller's transaction, published by the relay in `id` order.
    inbox: (consumer, event_id) of every processed event; the primary key makes a redelivered
    event a no-op in the same transaction as its effect. `event_id` holds `inbox_key(id)`;
    rows older than the topics' retention are pruned (services/common/inbox.py).
    """
    metadata = MetaData(schema=schema)
    outbox = Table(
        "outbox",
        metadata,
        Column("id", BigInteger, Identity(always=True), primary_key=True),
        Column("event_id", String(64), nullable=False, unique=True),
        Column("topic", String(249), nullable=False),
        Column("key", LargeBinary, nullable=False),
        Column("value", LargeBinary, nullable=False),
        Column("headers", JSONB, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("sent_at", DateTime(timezone=True)),
    )
    # Only unsent rows are scanned by the relay; the partial index stays small.
    Index("ix_outbox_unsent", outbox.c.id, postgresql_where=text("sent_at IS NULL"))
    inbox = Table(
        "inbox",
        metadata,
        Column("consumer", String(128), nullable=False),
        Column("event_id", Text, nullable=False),
        Column("topic", String(249), nullable=False),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        PrimaryKeyConstraint("consumer", "event_id", name="pk_inbox"),
    )
    # The pruner deletes the oldest rows in small batches; this keeps each batch an index range.
    Index("ix_inbox_processed_at", inbox.c.processed_at)
    return metadata, outbox, inbox


# An id of up to this many characters is its own inbox key (at most 256 bytes of UTF-8, well
# inside a btree entry's ~2.7 kB); a longer one is keyed by its digest. The digest key is
# longer than any literal key, so the two kinds never meet: every id has one key of its own.
INBOX_LITERAL_MAX = 64
_DIGEST_PREFIX = "sha256:"


def inbox_key(event_id: str) -> str:
    """The inbox's key for a CloudEvents id of any length (ids up to 64 characters: as is,
    which is what every inbox row written before long ids were accepted holds)."""
    if len(event_id) <= INBOX_LITERAL_MAX:
        return event_id
    digest = hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()
    return _DIGEST_PREFIX + digest


def widen_inbox(conn: Connection, schema: str) -> None:
    """Inbox v2, one migration in each service: keys of any id (`inbox_key`) and the index
    the pruner reads. varchar(64) -> text rewrites neither the table nor its index."""
    conn.execute(text(f'ALTER TABLE "{schema}".inbox ALTER COLUMN event_id TYPE text'))
    conn.execute(
        text(f'CREATE INDEX IF NOT EXISTS ix_inbox_processed_at ON "{schema}".inbox (processed_at)')
    )


def narrow_inbox(conn: Connection, schema: str) -> None:
    """Back to inbox v1: digest keys (longer than 64) cannot stay; their rows go."""
    conn.execute(text(f'DROP INDEX IF EXISTS "{schema}".ix_inbox_processed_at'))
    conn.execute(text(f'DELETE FROM "{schema}".inbox WHERE length(event_id) > 64'))
    conn.execute(text(f'ALTER TABLE "{schema}".inbox ALTER COLUMN event_id TYPE varchar(64)'))


def create_runtime_tables(conn: Connection, schema: str) -> None:
    """Create a service schema with its outbox/inbox and the trigger that wakes the relay.

    The trigger fires once per INSERT statement, so the writer pays no extra round trip and
    PostgreSQL folds identical notifications of one transaction into one, sent at commit.
    Used by every service's first migration, with today's shape of the tables (a fresh
    schema); later shapes come with a migration in each service that brings an existing
    schema to them (`widen_inbox`) and does nothing to a fresh one.
    """
    conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    metadata, _outbox, _inbox = runtime_metadata(schema)
    metadata.create_all(conn)
    for statement in outbox_notify_ddl(schema):
        conn.execute(text(statement))


def drop_runtime_tables(conn: Connection, schema: str) -> None:
    conn.execute(text(f'DROP TABLE IF EXISTS "{schema}".inbox, "{schema}".outbox'))
    conn.execute(text(f'DROP FUNCTION IF EXISTS "{schema}".outbox_notify()'))


async def create_runtime_schema(conn: AsyncConnection, schema: str) -> None:
    await conn.run_sync(create_runtime_tables, schema)


def outbox_notify_ddl(schema: str) -> list[str]:
    channel = outbox_channel(schema)
    return [
        f"""CREATE OR REPLACE FUNCTION "{schema}".outbox_notify() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_notify('{channel}', ''); RETURN NULL; END $$""",
        f'DROP TRIGGER IF EXISTS outbox_notify ON "{schema}".outbox',
        f"""CREATE TRIGGER outbox_notify AFTER INSERT ON "{schema}".outbox
            FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".outbox_notify()""",
    ]


def asyncpg_dsn(database_url: str) -> str:
    """The plain libpq-style DSN asyncpg wants, from a SQLAlchemy URL."""
    return re.sub(r"^postgresql\+asyncpg://", "postgresql://", database_url)
