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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import JSON, Table, event, insert
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

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


def _arrays(
    table: Table, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> list[list[Any]]:
    """One array per column, the rows' values in order: the arguments of `_insert_select`."""
    return [[_value(table, c, row[c]) for row in rows] for c in columns]


def _insert_select(
    table: Table, columns: tuple[str, ...], first: int, where: str | None = None
) -> str:
    # unnest of one array per column: one prepared statement for any number of rows. WITH
    # ORDINALITY keeps the rows in the order given (an identity column, such as the outbox's
    # `id` that the relay publishes by, is drawn in that order).
    arrays = ", ".join(f"${i}::{_sql_type(table, c)}[]" for i, c in enumerate(columns, first))
    names = ", ".join(_quoted(c) for c in columns)
    aliases = ", ".join(f"c{i}" for i in range(len(columns)))
    filtered = f" WHERE {where}" if where else ""
    return (
        f"INSERT INTO {_table_name(table)} ({names}) SELECT {aliases} FROM unnest({arrays}) "
        f"WITH ORDINALITY AS r({aliases}, n){filtered} ORDER BY n"
    )


@functools.cache
def _insert_sql(
    table: Table,
    columns: tuple[str, ...],
    do_nothing: bool,
    conflict_on: tuple[str, ...],
    returning: str | None,
) -> str:
    sql = _insert_select(table, columns, 1)
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
    arrays = _arrays(table, columns, rows)
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


@functools.cache
def _insert_then_select_sql(
    table: Table,
    columns: tuple[str, ...],
    do_nothing: bool,
    returning: str | None,
    select_sql: str,
    select_args: int,
) -> str:
    insert = _insert_select(table, columns, select_args + 1)
    if do_nothing:
        insert += " ON CONFLICT DO NOTHING"
    if returning is not None:
        insert += f" RETURNING {_quoted(returning)}"
    return f"WITH inserted AS ({insert}) {select_sql}"


async def insert_then_select(
    session: AsyncSession,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    select_sql: str,
    *args: Any,
    on_conflict_do_nothing: bool = False,
    returning: str | None = None,
) -> Iterable[asyncpg.Record]:
    """Insert `rows` and run `select_sql` (with `args` as $1...) in one statement: one round
    trip where a batch writes its rows and then reads (and locks) others. The select does not
    see the rows inserted (one snapshot); the statements after it do. With `returning`, the
    select may read that column of the rows inserted from `inserted` (with
    `on_conflict_do_nothing`: the rows that were not there yet); `rows` must not be empty."""
    if not rows:
        if returning is not None:
            raise ValueError("insert_then_select with `returning` needs rows")
        return await select_rows(session, select_sql, *args)
    columns = tuple(rows[0])
    sql = _insert_then_select_sql(
        table, columns, on_conflict_do_nothing, returning, select_sql, len(args)
    )
    arrays = _arrays(table, columns, rows)
    driver = await driver_connection(session)
    records: list[asyncpg.Record] = await driver.fetch(sql, *args, *arrays)
    return records


async def select_rows(session: AsyncSession, sql: str, *args: Any) -> Iterable[asyncpg.Record]:
    """A hot read on the session's connection, in its transaction (e.g. rows to lock)."""
    driver = await driver_connection(session)
    records: list[asyncpg.Record] = await driver.fetch(sql, *args)
    return records


# -- rows written at the end of a unit of work, in one statement ---------------------------------

DEFERRED = "tongban_deferred_rows"
GUARD = "tongban_deferred_guard"


@dataclass(frozen=True, slots=True)
class Guard:
    """The row that decides whether a unit of work's deferred rows are written (a submission's
    Idempotency-Key): it goes in with them, in the same statement, unless a row with its key
    is there already (a retry, or a retry that raced this one); then none of them is written
    and `clash()` is raised."""

    table: Table
    row: Mapping[str, Any]
    clash: Callable[[], Exception]


def defer_rows(
    session: AsyncSession | Session, table: Table, rows: Iterable[Mapping[str, Any]]
) -> None:
    """Insert `rows` when the unit of work ends (`flush_deferred`), with every other deferred
    row in one statement: a submission's case, its outbox rows and its key are one round trip
    instead of one each (and, as the unit's only statement, need no BEGIN and COMMIT)."""
    _deferred(session).extend((table, dict(row)) for row in rows)


def defer_guard(session: AsyncSession | Session, guard: Guard) -> None:
    """Make the unit of work's deferred rows depend on `guard` (one guard a unit of work)."""
    info = _info(session)
    if GUARD in info:
        raise RuntimeError("a unit of work has one guard")
    info[GUARD] = guard


def discard_deferred(session: AsyncSession | Session) -> None:
    """Forget the rows of work that is being rolled back (a failed savepoint)."""
    info = _info(session)
    info.pop(DEFERRED, None)
    info.pop(GUARD, None)


async def flush_deferred(session: AsyncSession, *, last: bool = False) -> None:
    """Write the deferred rows now, in one statement on the session's asyncpg connection, in
    the session's transaction. With `last` (the unit of work runs no statement after this
    one: `unit_of_work`'s end) and no statement run before it, the statement is the whole
    transaction: no BEGIN and COMMIT round trips (one statement is atomic). Raises the guard's
    clash when its row was there already (nothing is written then)."""
    info = _info(session)
    deferred: list[tuple[Table, dict[str, Any]]] = info.pop(DEFERRED, None) or []
    guard: Guard | None = info.pop(GUARD, None)
    if not deferred and guard is None:
        return
    runs = list(_runs(deferred))
    shape = tuple((table, tuple(rows[0])) for table, rows in runs)
    guard_shape = (guard.table, tuple(guard.row)) if guard is not None else None
    sql = _together_sql(shape, guard_shape)
    args: list[list[Any]] = []
    if guard is not None:
        args += _arrays(guard.table, tuple(guard.row), [guard.row])
    for table, rows in runs:
        args += _arrays(table, tuple(rows[0]), rows)
    # Without BEGIN, the statement still joins a transaction begun before (same connection).
    driver = await driver_connection(session, transaction=not last)
    if guard is None:
        await driver.execute(sql, *args)
    elif not await driver.fetchval(sql, *args):
        raise guard.clash()


def flush_deferred_sync(session: Session) -> None:
    """The same through SQLAlchemy, at commit, for writers that did not call `flush_deferred`."""
    info = session.info
    deferred: list[tuple[Table, dict[str, Any]]] = info.pop(DEFERRED, None) or []
    guard: Guard | None = info.pop(GUARD, None)
    if guard is not None:
        stored = session.execute(
            pg_insert(guard.table).values(**guard.row).on_conflict_do_nothing().returning(1)
        ).first()
        if stored is None:
            raise guard.clash()
    for table, rows in _runs(deferred):
        session.execute(insert(table), rows)


@event.listens_for(Session, "before_commit")
def _flush_before_commit(session: Session) -> None:
    # Runs inside SQLAlchemy's greenlet under AsyncSession, so it may do I/O.
    flush_deferred_sync(session)


def _info(session: AsyncSession | Session) -> dict[str, Any]:
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    return sync.info


def _deferred(session: AsyncSession | Session) -> list[tuple[Table, dict[str, Any]]]:
    deferred: list[tuple[Table, dict[str, Any]]] = _info(session).setdefault(DEFERRED, [])
    return deferred


def _runs(
    deferred: list[tuple[Table, dict[str, Any]]],
) -> Iterator[tuple[Table, list[dict[str, Any]]]]:
    """The rows by table and set of columns, in the order each was first deferred; rows keep
    their order within a table (the outbox's events of one case)."""
    runs: dict[tuple[Table, tuple[str, ...]], list[dict[str, Any]]] = {}
    for table, row in deferred:
        runs.setdefault((table, tuple(row)), []).append(row)
    for (table, _columns), rows in runs.items():
        yield table, rows


@functools.cache
def _together_sql(
    runs: tuple[tuple[Table, tuple[str, ...]], ...],
    guard: tuple[Table, tuple[str, ...]] | None,
) -> str:
    """One statement for every run (data-modifying CTEs); with a guard, each run is written
    only if the guard's row was, and the statement answers how many guard rows went in."""
    parts: list[str] = []
    first = 1
    where = None
    if guard is not None:
        table, columns = guard
        parts.append(
            f"guard AS ({_insert_select(table, columns, first)} ON CONFLICT DO NOTHING RETURNING 1)"
        )
        first += len(columns)
        where = "EXISTS (SELECT FROM guard)"
    inserts = []
    for table, columns in runs:
        inserts.append(_insert_select(table, columns, first, where))
        first += len(columns)
    if guard is not None:
        final = "SELECT count(*) FROM guard"
    else:
        final = inserts.pop()
    parts += [f"w{i} AS ({sql})" for i, sql in enumerate(inserts)]
    return f"WITH {', '.join(parts)} {final}" if parts else final
