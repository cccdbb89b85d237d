"""State rows on asyncpg (services/common/rows.py) read back through SQLAlchemy as equal: every
column type the event path writes, None, and rows that were there before; rows deferred to the
end of a unit of work, written in one statement, behind a guard row."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Column, Date, DateTime, Integer, MetaData, String, Table, Text, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.common.db import (
    asyncpg_dsn,
    driver_connection,
    make_engine,
    make_sessionmaker,
    unit_of_work,
)
from services.common.failures import is_infrastructure_error
from services.common.rows import (
    Guard,
    defer_guard,
    defer_rows,
    flush_deferred,
    insert_rows,
    insert_then_select,
    select_rows,
    update_rows,
)
from services.common.settings import CommonSettings

pytestmark = pytest.mark.integration


@pytest.fixture
async def table(engine: AsyncEngine, schema: str) -> AsyncIterator[Table]:
    metadata = MetaData(schema=schema)
    kept = Table(
        "kept",
        metadata,
        Column("id", Text, primary_key=True),
        Column("status", String(32), nullable=False),
        Column("rank", Integer),
        Column("data", JSONB),
        Column("due", Date),
        Column("at", DateTime(timezone=True)),
    )
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield kept


@pytest.fixture
async def keys(engine: AsyncEngine, schema: str) -> AsyncIterator[Table]:
    """A guard's table, as intake's Idempotency-Keys: its key, and what it took."""
    metadata = MetaData(schema=schema)
    guarding = Table(
        "guarding",
        metadata,
        Column("key", Text, primary_key=True),
        Column("taken", Text, nullable=False),
        Column("answer", JSONB, nullable=False),
    )
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield guarding


ROWS: list[dict[str, Any]] = [
    {
        "id": "r1",
        "status": "submitted",
        "rank": 1,
        "data": {"申请人": "张三", "list": [1, None, "x"], "nested": {"ok": True}},
        "due": date(2026, 12, 31),
        "at": datetime(2026, 12, 7, 8, 30, tzinfo=UTC),
    },
    {"id": "r2", "status": "routed", "rank": None, "data": None, "due": None, "at": None},
]


async def read(sessions: async_sessionmaker[AsyncSession], table: Table) -> list[dict[str, Any]]:
    async with sessions() as session:
        rows = await session.execute(select(table).order_by(table.c.id))
        return [dict(row._mapping) for row in rows]


async def test_rows_inserted_and_updated_on_asyncpg_read_back_equal(
    sessions: async_sessionmaker[AsyncSession], table: Table
) -> None:
    async with sessions() as session, session.begin():
        inserted = await insert_rows(session, table, ROWS, returning="id")
    assert inserted == ["r1", "r2"]
    assert await read(sessions, table) == ROWS

    async with sessions() as session, session.begin():
        again = await insert_rows(
            session,
            table,
            [ROWS[0] | {"status": "other"}],
            on_conflict_do_nothing=True,
            returning="id",
        )
        await update_rows(
            session,
            table,
            [
                ({"id": "r2"}, {"status": "closed", "data": [1, 2]}),
                ({"id": "r1"}, {"rank": 7}),
                ({"id": "r9"}, {"rank": 9}),  # no such row: nothing
                ({"id": "r1"}, {}),  # nothing to change
            ],
        )
        locked = await select_rows(
            session, f"SELECT id, data FROM {table.fullname} WHERE id = ANY($1) FOR UPDATE", ["r1"]
        )
    assert again == []  # there already: nothing inserted, nothing changed
    assert [(r[0], r[1]) for r in locked] == [("r1", ROWS[0]["data"])]  # JSONB read as objects
    after = await read(sessions, table)
    assert after[0] == ROWS[0] | {"rank": 7}
    assert after[1] == ROWS[1] | {"status": "closed", "data": [1, 2]}
    assert len(after) == 2


async def test_rows_updated_together_take_each_their_own_values(
    sessions: async_sessionmaker[AsyncSession], table: Table
) -> None:
    """Many rows changing the same columns in one statement (intake's timeline batch), the
    columns named in any order, JSONB and NULL among the values."""
    rows = [ROWS[0] | {"id": f"m{n}", "rank": n} for n in range(50)]
    async with sessions() as session, session.begin():
        await insert_rows(session, table, rows)
        await update_rows(
            session,
            table,
            [
                (
                    {"id": f"m{n}"},
                    {"status": f"s{n}", "data": {"n": n}}
                    if n % 2
                    else {"data": None, "status": f"s{n}"},
                )
                for n in range(50)
            ],
        )
    after = {r["id"]: r for r in await read(sessions, table)}
    for n in range(50):
        assert after[f"m{n}"]["status"] == f"s{n}"
        assert after[f"m{n}"]["data"] == ({"n": n} if n % 2 else None)
        assert after[f"m{n}"]["rank"] == n


async def test_rows_roll_back_with_the_transaction(
    sessions: async_sessionmaker[AsyncSession], table: Table
) -> None:
    with pytest.raises(RuntimeError):
        async with sessions() as session, session.begin():
            await insert_rows(session, table, ROWS)
            raise RuntimeError("the handler failed after its rows were written")
    assert await read(sessions, table) == []


async def test_a_connection_found_dead_is_not_handed_out_again(settings: CommonSettings) -> None:
    """PostgreSQL restarted (here: the backend terminated): the first runtime statement on a
    pooled connection fails, and the next unit of work gets a live one, not the dead one back
    (the runtime's statements go around SQLAlchemy, which would otherwise drop the pool)."""
    engine = make_engine(settings, pool_size=1)
    sessions = make_sessionmaker(engine)
    try:
        async with sessions() as session, session.begin():
            first = await (await driver_connection(session)).fetchval("SELECT pg_backend_pid()")
        killer = await asyncpg.connect(asyncpg_dsn(settings.database_url))
        try:
            assert await killer.fetchval("SELECT pg_terminate_backend($1)", first)
        finally:
            await killer.close()
        with pytest.raises(Exception) as failed:
            async with sessions() as session, session.begin():
                await (await driver_connection(session)).fetchval("SELECT 1")
        assert is_infrastructure_error(failed.value), failed.value
        async with sessions() as session, session.begin():
            again = await (await driver_connection(session)).fetchval("SELECT pg_backend_pid()")
        assert again != first
    finally:
        await engine.dispose()


class KeyTaken(Exception):
    pass


async def test_deferred_rows_of_several_tables_go_in_together_behind_their_guard(
    sessions: async_sessionmaker[AsyncSession], table: Table, keys: Table
) -> None:
    """A submission's shape: rows of two tables interleaved and a guard row, in one statement;
    a second unit of work with the same guard key writes nothing and raises the guard's clash."""
    more = [{"id": f"r{n}", "status": f"s{n}"} for n in range(3, 6)]

    def submit(session: AsyncSession, key: str, taken: str, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            defer_rows(session, table, [row])
            defer_rows(session, keys, [{"key": f"{key}-{row['id']}", "taken": "x", "answer": []}])
        guard = {"key": key, "taken": taken, "answer": {"申请人": "张三"}}
        defer_guard(session, Guard(keys, guard, lambda: KeyTaken(key)))

    async with unit_of_work(sessions) as session:
        submit(session, "k1", "first", ROWS)
    assert await read(sessions, table) == ROWS
    with pytest.raises(KeyTaken):
        async with unit_of_work(sessions) as session:
            submit(session, "k1", "second", [{"id": "r9", "status": "never"}])
    async with unit_of_work(sessions) as session:
        submit(session, "k2", "third", more)
    after = await read(sessions, table)
    assert [row["id"] for row in after] == ["r1", "r2", "r3", "r4", "r5"]
    assert [(row["id"], row["status"]) for row in after[2:]] == [
        (row["id"], row["status"]) for row in more
    ]
    async with sessions() as session:
        stored = {r.key: (r.taken, r.answer) for r in await session.execute(select(keys))}
    assert stored["k1"] == ("first", {"申请人": "张三"})
    assert stored["k2"] == ("third", {"申请人": "张三"})
    assert "k1-r9" not in stored and {"k1-r1", "k1-r2", "k2-r5"} <= set(stored)


async def test_deferred_rows_alone_are_their_own_transaction(
    sessions: async_sessionmaker[AsyncSession], table: Table
) -> None:
    """Nothing else ran in the unit of work: its one statement needs no BEGIN and is seen by
    others at once, before the session's (empty) commit."""
    async with sessions() as session, session.begin():
        defer_rows(session, table, ROWS)
        await flush_deferred(session, last=True)
        assert await read(sessions, table) == ROWS


async def test_deferred_rows_last_join_a_begun_transaction_and_roll_back_with_it(
    sessions: async_sessionmaker[AsyncSession], table: Table
) -> None:
    with pytest.raises(RuntimeError):
        async with sessions() as session, session.begin():
            await insert_rows(session, table, ROWS[:1])
            defer_rows(session, table, ROWS[1:])
            await flush_deferred(session, last=True)
            assert await read(sessions, table) == []  # not committed yet: inside the transaction
            raise RuntimeError("the handler failed after its rows were written")
    assert await read(sessions, table) == []


async def test_rows_inserted_then_others_selected_in_one_statement(
    sessions: async_sessionmaker[AsyncSession], table: Table, keys: Table
) -> None:
    """intake's timeline: the batch's entries in, its cases read and locked; the select's own
    arguments come first, the inserted rows' after them; a redelivered row adds nothing."""
    async with unit_of_work(sessions) as session:
        await insert_rows(session, table, ROWS)
    entries = [{"key": "e1", "taken": "r1", "answer": {"n": 1}}]
    select = f"SELECT id, status FROM {table.fullname} WHERE id = ANY($1::text[]) FOR UPDATE"
    for _ in range(2):
        async with unit_of_work(sessions) as session:
            found = await insert_then_select(
                session, keys, entries, select, ["r2", "nope"], on_conflict_do_nothing=True
            )
            assert [(r["id"], r["status"]) for r in found] == [("r2", "routed")]
    async with sessions() as session:
        stored = [tuple(r) for r in await session.execute(select_all(keys))]
    assert stored == [("e1", "r1", {"n": 1})]
    async with unit_of_work(sessions) as session:
        nothing = await insert_then_select(session, keys, [], select, ["r1"])
        assert [r["id"] for r in nothing] == ["r1"]


def select_all(t: Table) -> Any:
    return select(t).order_by(*t.primary_key.columns)
