"""State rows on asyncpg (services/common/rows.py) read back through SQLAlchemy as equal: every
column type the event path writes, None, and rows that were there before."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
from sqlalchemy import Column, Date, DateTime, Integer, MetaData, String, Table, Text, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.common.rows import insert_rows, select_rows, update_row

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
        await update_row(session, table, {"id": "r2"}, {"status": "closed", "data": [1, 2]})
        locked = await select_rows(
            session, f"SELECT id, data FROM {table.fullname} WHERE id = ANY($1) FOR UPDATE", ["r1"]
        )
    assert again == []  # there already: nothing inserted, nothing changed
    assert [(r[0], r[1]) for r in locked] == [("r1", ROWS[0]["data"])]  # JSONB read as objects
    after = await read(sessions, table)
    assert after[0] == ROWS[0]
    assert after[1] == ROWS[1] | {"status": "closed", "data": [1, 2]}


async def test_rows_roll_back_with_the_transaction(
    sessions: async_sessionmaker[AsyncSession], table: Table
) -> None:
    with pytest.raises(RuntimeError):
        async with sessions() as session, session.begin():
            await insert_rows(session, table, ROWS)
            raise RuntimeError("the handler failed after its rows were written")
    assert await read(sessions, table) == []
