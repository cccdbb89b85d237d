"""Async SQLAlchemy on asyncpg: one pooled engine per process, one schema per service.

Every service keeps its tables in its own PostgreSQL schema (named after the service) and
never reads another's. The runtime tables (outbox, inbox) live beside the service's own.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
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
    """One transaction: state changes and their outbox rows commit together or not at all."""
    async with sessions() as session, session.begin():
        yield session


def outbox_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel that wakes a schema's outbox relay."""
    return f"tongban_outbox_{schema}"


def runtime_metadata(schema: str) -> tuple[MetaData, Table, Table]:
    """The outbox and inbox tables of one service schema.

    outbox: events written in the caller's transaction, published by the relay in `id` order.
    inbox: (consumer, event_id) of every processed event; the primary key makes a redelivered
    event a no-op in the same transaction as its effect.
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
        Column("event_id", String(64), nullable=False),
        Column("topic", String(249), nullable=False),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        PrimaryKeyConstraint("consumer", "event_id", name="pk_inbox"),
    )
    return metadata, outbox, inbox


def create_runtime_tables(conn: Connection, schema: str) -> None:
    """Create a service schema with its outbox/inbox and the trigger that wakes the relay.

    The trigger fires once per INSERT statement, so the writer pays no extra round trip and
    PostgreSQL folds identical notifications of one transaction into one, sent at commit.
    This is the v1 shape used by every service's first migration: change the tables only
    together with a new migration in each service.
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
