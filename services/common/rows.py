"""State rows on the event path, written on the session's asyncpg connection.

Every applied event writes a few rows (a case's timeline entry, its new status); through
SQLAlchemy each such statement costs as much CPU again as asyncpg's own work on it (statement
construction, its cache key, compilation lookup, greenlet hops, result processing: issue 18).
These helpers take the same SQLAlchemy `Table` and plain row dicts, build the SQL once per shape
of row, and run it as an asyncpg prepared statement inside the session's transaction
(`driver_connection`). Column types come from the table: a JSON/JSONB value is sent as JSON
text (the dialect's codec on every pooled connection expects text, and reads JSONB back as
Python objects), every other value as asyncpg sends it. Handlers that read or write rarely keep
SQLAlchemy; these are for the statements every event runs.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import asyncpg
from sqlalchemy import JSON, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.db import driver_connection

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table_name(table: Table) -> str:
    return f"{_quoted(table.schema)}.{_quoted(table.name)}" if table.schema else _quoted(table.name)


@functools.cache
def _is_json(table: Table, column: str) -> bool:
    return isinstance(table.c[column].type, JSON)


@functools.cache
def _sql_type(table: Table, column: str) -> str:
    return str(table.c[column].type.compile(dialect=_DIALECT))


def _value(table: Table, column: str, value: Any) -> Any:
    if value is not None and _is_json(table, column):
        return json.dumps(value)
    return value


@functools.cache
def _insert_sql(
    table: Table,
    columns: tuple[str, ...],
    do_nothing: bool,
    conflict_on: tuple[str, ...],
    returning: str | None,
) -> str:
    # unnest of one array per column: one prepared statement for any number of rows. WITH
    # ORDINALITY keeps the rows in the order given (an identity column, such as the outbox's
    # `id` that the relay publishes by, is drawn in that order).
    arrays = ", ".join(f"${i}::{_sql_type(table, c)}[]" for i, c in enumerate(columns, 1))
    names = ", ".join(_quoted(c) for c in columns)
    aliases = ", ".join(f"c{i}" for i in range(len(columns)))
    sql = (
        f"INSERT INTO {_table_name(table)} ({names}) SELECT {aliases} FROM unnest({arrays}) "
        f"WITH ORDINALITY AS r({aliases}, n) ORDER BY n"
    )
    if do_nothing:
        target = f" ({', '.join(_quoted(c) for c in conflict_on)})" if conflict_on else ""
        sql += f" ON CONFLICT{target} DO NOTHING"
    if returning is not None:
        sql += f" RETURNING {_quoted(returning)}"
    return sql


@functools.cache
def _update_sql(table: Table, keys: tuple[str, ...], columns: tuple[str, ...]) -> str:
    # One array per column, as for inserts: one prepared statement for any number of rows.
    names = (*columns, *keys)
    arrays = ", ".join(f"${i}::{_sql_type(table, c)}[]" for i, c in enumerate(names, 1))
    aliases = ", ".join(f"c{i}" for i in range(len(names)))
    sets = ", ".join(f"{_quoted(c)} = r.c{i}" for i, c in enumerate(columns))
    where = " AND ".join(f"t.{_quoted(k)} = r.c{i}" for i, k in enumerate(keys, len(columns)))
    return (
        f"UPDATE {_table_name(table)} AS t SET {sets} "
        f"FROM unnest({arrays}) AS r({aliases}) WHERE {where}"
    )


async def insert_rows(
    session: AsyncSession,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    on_conflict_do_nothing: bool = False,
    conflict_on: tuple[str, ...] = (),
    returning: str | None = None,
) -> list[Any]:
    """Insert `rows` (dicts with the same keys) in one statement; the `returning` column of
    each row inserted (with `on_conflict_do_nothing`, the rows that were not there yet; only a
    clash on the `conflict_on` columns, when given: any other clash fails loudly)."""
    if not rows:
        return []
    columns = tuple(rows[0])
    sql = _insert_sql(table, columns, on_conflict_do_nothing, conflict_on, returning)
    arrays = [[_value(table, c, row[c]) for row in rows] for c in columns]
    driver = await driver_connection(session)
    if returning is None:
        await driver.execute(sql, *arrays)
        return []
    records: list[asyncpg.Record] = await driver.fetch(sql, *arrays)
    return [record[0] for record in records]


async def update_rows(
    session: AsyncSession,
    table: Table,
    updates: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
) -> None:
    """Apply each (key, changes): set `changes` on the row whose columns equal `key` (its
    primary key). One statement for all the rows that change the same columns (a batch of
    events changes a few such sets over many rows), not a round trip per row."""
    shapes: dict[tuple[tuple[str, ...], tuple[str, ...]], list[list[Any]]] = {}
    for key, changes in updates:
        if not changes:
            continue
        columns, keys = tuple(sorted(changes)), tuple(key)
        arrays = shapes.setdefault((keys, columns), [[] for _ in (*columns, *keys)])
        values = [*((c, changes[c]) for c in columns), *key.items()]
        for array, (column, value) in zip(arrays, values, strict=True):
            array.append(_value(table, column, value))
    if not shapes:
        return
    driver = await driver_connection(session)
    for (keys, columns), arrays in shapes.items():
        await driver.execute(_update_sql(table, keys, columns), *arrays)


async def select_rows(session: AsyncSession, sql: str, *args: Any) -> Iterable[asyncpg.Record]:
    """A hot read on the session's connection, in its transaction (e.g. rows to lock)."""
    driver = await driver_connection(session)
    records: list[asyncpg.Record] = await driver.fetch(sql, *args)
    return records
