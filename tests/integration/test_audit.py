"""The audit trail on the real database: concurrent appends keep one linear chain, and a row
altered or deleted behind the application's back is reported by check_chain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.common.audit import (
    GENESIS_HASH,
    append,
    check_chain,
    create_audit_table,
    drop_audit_table,
    head,
    read_audit,
)
from services.common.db import unit_of_work
from tests.conftest import unique

pytestmark = pytest.mark.integration

WRITERS = 4
PER_WRITER = 50


@pytest.fixture
async def audit_schema(engine: AsyncEngine) -> AsyncIterator[str]:
    """A fresh schema holding only the audit table."""
    name = unique("t")
    async with engine.begin() as conn:
        await conn.run_sync(create_audit_table, name)
    yield name
    async with engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))


async def write(sessions: async_sessionmaker[AsyncSession], schema: str, writer: int) -> None:
    for i in range(PER_WRITER):
        async with unit_of_work(sessions) as session:
            await append(
                session,
                schema,
                actor=f"clerk-{writer}",
                role="clerk",
                scope="HC01-DC",
                action="case.read" if i % 5 else "case.decide",
                case_id=f"HC-{writer}-{i % 7:04d}",
                detail={"decision": "approve"} if i % 5 == 0 else None,
            )


async def tamper(engine: AsyncEngine, schema: str, statement: str) -> None:
    """What someone with the table owner's rights can do: switch the guard off, edit."""
    async with engine.begin() as conn:
        await conn.execute(text(f'ALTER TABLE "{schema}".audit DISABLE TRIGGER audit_append_only'))
        await conn.execute(text(statement.format(table=f'"{schema}".audit')))
        await conn.execute(text(f'ALTER TABLE "{schema}".audit ENABLE TRIGGER audit_append_only'))


async def test_concurrent_appends_form_one_chain_and_tampering_is_reported(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], audit_schema: str
) -> None:
    schema = audit_schema
    await asyncio.gather(*(write(sessions, schema, w) for w in range(WRITERS)))

    async with sessions() as session:
        report = await check_chain(session, schema, batch_size=32)  # several fetches
        seqs = (await session.execute(text(f'SELECT seq FROM "{schema}".audit'))).scalars()
        assert sorted(seqs) == list(range(1, WRITERS * PER_WRITER + 1))
        first = (
            await session.execute(text(f'SELECT prev_hash FROM "{schema}".audit WHERE seq = 1'))
        ).scalar_one()
        anchor = await head(session, schema)
    assert report.ok, report.message
    assert report.rows_checked == WRITERS * PER_WRITER
    assert first == GENESIS_HASH
    assert anchor is not None and (anchor.seq, anchor.hash) == (report.head_seq, report.head_hash)

    async with sessions() as session:
        original = (await read_audit(session, schema, after_seq=56, limit=1)).records[0].actor
    await tamper(engine, schema, "UPDATE {table} SET actor = 'mallory' WHERE seq = 57")
    async with sessions() as session:
        report = await check_chain(session, schema, batch_size=32)
    assert not report.ok
    assert (report.first_broken_seq, report.problem) == (57, "altered")
    assert report.rows_checked == 57
    assert "seq 57" in report.message and "altered" in report.message

    # Put 57 back as it was (the chain is whole again), then delete 80.
    await tamper(engine, schema, f"UPDATE {{table}} SET actor = '{original}' WHERE seq = 57")
    async with sessions() as session:
        assert (await check_chain(session, schema)).ok
    await tamper(engine, schema, "DELETE FROM {table} WHERE seq = 80")
    async with sessions() as session:
        report = await check_chain(session, schema)
    assert not report.ok
    assert (report.first_broken_seq, report.problem) == (80, "missing")
    assert "seq 80 missing after seq 79" in report.message


async def test_deleted_row_alone_is_reported_as_missing(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], audit_schema: str
) -> None:
    await write(sessions, audit_schema, 0)
    await tamper(engine, audit_schema, "DELETE FROM {table} WHERE seq = 20")
    async with sessions() as session:
        report = await check_chain(session, audit_schema, batch_size=8)
    assert (report.ok, report.first_broken_seq, report.problem) == (False, 20, "missing")


async def test_deleting_the_newest_rows_needs_the_published_head_to_show(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], audit_schema: str
) -> None:
    await write(sessions, audit_schema, 0)
    async with sessions() as session:
        published = await head(session, audit_schema)
    await tamper(engine, audit_schema, f"DELETE FROM {{table}} WHERE seq > {PER_WRITER - 3}")
    async with sessions() as session:
        alone = await check_chain(session, audit_schema)
        anchored = await check_chain(session, audit_schema, anchor=published)
    assert alone.ok  # the chain alone cannot see a cut end
    assert (anchored.ok, anchored.first_broken_seq) == (False, PER_WRITER - 2)


async def test_the_table_refuses_update_delete_and_truncate(
    sessions: async_sessionmaker[AsyncSession], audit_schema: str
) -> None:
    await write(sessions, audit_schema, 0)
    for statement in (
        f"UPDATE \"{audit_schema}\".audit SET actor = 'mallory' WHERE seq = 1",
        f'DELETE FROM "{audit_schema}".audit WHERE seq = 1',
        f'TRUNCATE "{audit_schema}".audit',
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with unit_of_work(sessions) as session:
                await session.execute(text(statement))


async def test_an_append_rolled_back_with_its_transaction_leaves_no_row(
    sessions: async_sessionmaker[AsyncSession], audit_schema: str
) -> None:
    with pytest.raises(RuntimeError):
        async with unit_of_work(sessions) as session:
            await append(
                session,
                audit_schema,
                actor="clerk",
                role="clerk",
                scope=None,
                action="case.decide",
                case_id="HC-1",
            )
            raise RuntimeError("the decision failed")
    async with unit_of_work(sessions) as session:
        await append(
            session,
            audit_schema,
            actor="clerk",
            role="clerk",
            scope=None,
            action="case.decide",
            case_id="HC-1",
        )
    async with sessions() as session:
        page = await read_audit(session, audit_schema)
        report = await check_chain(session, audit_schema)
    assert [r.seq for r in page.records] == [1] and report.ok


async def test_read_audit_filters_and_pages_by_seq(
    sessions: async_sessionmaker[AsyncSession], audit_schema: str
) -> None:
    await asyncio.gather(*(write(sessions, audit_schema, w) for w in range(2)))
    async with sessions() as session:
        seen: list[int] = []
        after: int | None = None
        while True:
            page = await read_audit(
                session, audit_schema, actor="clerk-1", limit=15, after_seq=after
            )
            seen += [r.seq for r in page.records]
            assert all(r.actor == "clerk-1" for r in page.records)
            if page.next_after_seq is None:
                break
            after = page.next_after_seq
        assert len(seen) == PER_WRITER and seen == sorted(seen)

        case = await read_audit(session, audit_schema, case_id="HC-0-0000")
        assert {r.case_id for r in case.records} == {"HC-0-0000"}
        assert len(case.records) == len(range(0, PER_WRITER, 7))
        decided = [r for r in case.records if r.action == "case.decide"]
        assert all(r.detail == {"decision": "approve"} for r in decided)

        newest = (await read_audit(session, audit_schema, limit=1000)).records[-1]
        later = await read_audit(session, audit_schema, since=newest.at)
        assert newest.seq in [r.seq for r in later.records]
        assert not (await read_audit(session, audit_schema, since=newest.at + timedelta(1))).records


async def test_create_and_drop_are_repeatable(engine: AsyncEngine) -> None:
    name = unique("t")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(create_audit_table, name)
            await conn.run_sync(drop_audit_table, name)
            await conn.run_sync(create_audit_table, name)
            triggers = (
                await conn.execute(
                    text(
                        "SELECT tgname FROM pg_trigger "
                        "WHERE tgrelid = CAST(:t AS regclass) AND NOT tgisinternal"
                    ),
                    {"t": f'"{name}".audit'},
                )
            ).scalars()
            assert set(triggers) == {"audit_append_only", "audit_no_truncate"}
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
