"""Audit trail: who read or decided which case, when; hash-chained so tampering shows.

Every read of a case with personal data and every decision appends one row to the service's
own `<schema>.audit` table, in the caller's transaction (an audited action that rolls back
leaves no row, a committed one always has its row). Each row carries the SHA-256 of its
predecessor's hash plus its own content, so the rows form one chain per schema:

    hash(n) = sha256(hash(n-1) + canonical_json(seq, at, actor, role, scope, action, case_id,
                                                detail))      with hash(0) = "0" * 64

`verify_chain` walks the chain and names the first broken link: a row whose content no longer
matches its hash (altered), a missing seq (deleted), or a prev_hash that is not the previous
row's hash (rows deleted and renumbered, reordered, or a row rewritten with a fresh hash).

What the chain alone cannot show, and what covers it:
- Deleting the newest rows leaves a shorter chain that is still intact. Publish the head
  (`head()`: seq and hash) periodically somewhere the database's writers cannot rewrite (a log
  shipped off the machine, a Kafka topic, a signed receipt), and pass the last published head
  as `anchor`: a chain that no longer reaches it, or reaches it with another hash, is reported.
- Whoever can write the table and knows this algorithm can recompute every hash after an
  edit; only an anchor taken before the edit exposes that. The table also refuses UPDATE,
  DELETE and TRUNCATE by trigger, so a tamperer must first disable it (as the table owner).

Writers are serialised per schema by a transaction-scoped advisory lock, so the chain stays
linear under concurrent requests and replicas; the lock is held until the caller commits, so
call `append` last in the unit of work. It needs READ COMMITTED (PostgreSQL's default): under
a snapshot taken before the lock a writer would miss its predecessor, and the primary key on
`seq` then refuses the insert rather than forking the chain.

`detail` is for small, non-personal facts (a decision, a reason code, a field list): never a
name, ID number, phone or address. Whatever looks personal is masked anyway before hashing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal

from pydantic import AwareDatetime, Field
from sqlalchemy import (
    CHAR,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, Row
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import TextClause

from contracts.common import Contract
from services.common.logs import mask_personal_data

GENESIS_HASH = "0" * 64
MAX_DETAIL_BYTES = 2048
MAX_PAGE = 1000

Problem = Literal["altered", "missing", "relinked", "out_of_order", "anchor_mismatch"]


# -- the table ---------------------------------------------------------------------------------


@cache
def audit_table(schema: str) -> Table:
    """`<schema>.audit`. `seq` is a plain bigint key set by `append` under the lock (an
    identity column would either refuse the explicit value or hold a sequence that never
    advances); it is part of the hashed content, so renumbering a row shows as an alteration."""
    metadata = MetaData(schema=schema)
    table = Table(
        "audit",
        metadata,
        Column("seq", BigInteger, primary_key=True, autoincrement=False),
        Column("at", DateTime(timezone=True), nullable=False),
        Column("actor", Text, nullable=False),
        Column("role", Text, nullable=False),
        Column("scope", Text),
        Column("action", String(64), nullable=False),
        Column("case_id", String(64)),
        Column("detail", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
        Column("prev_hash", CHAR(64), nullable=False),
        Column("hash", CHAR(64), nullable=False),
        CheckConstraint("seq > 0", name="ck_audit_seq_positive"),
    )
    # The filters of GET /v1/audit; each keeps seq order for keyset pages.
    Index("ix_audit_case", table.c.case_id, table.c.seq)
    Index("ix_audit_actor", table.c.actor, table.c.seq)
    Index("ix_audit_at", table.c.at)
    return table


def create_audit_table(conn: Connection, schema: str) -> None:
    """Create `<schema>.audit` with its append-only triggers (each service's audit migration)."""
    conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    table = audit_table(schema)
    table.metadata.create_all(conn, tables=[table])
    for statement in _append_only_ddl(schema):
        conn.execute(text(statement))


def drop_audit_table(conn: Connection, schema: str) -> None:
    conn.execute(text(f'DROP TABLE IF EXISTS "{schema}".audit'))
    conn.execute(text(f'DROP FUNCTION IF EXISTS "{schema}".audit_append_only()'))


def _append_only_ddl(schema: str) -> list[str]:
    return [
        f"""CREATE OR REPLACE FUNCTION "{schema}".audit_append_only() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'audit rows are append-only: % refused', TG_OP; END $$""",
        f"""CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON "{schema}".audit
            FOR EACH ROW EXECUTE FUNCTION "{schema}".audit_append_only()""",
        f"""CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON "{schema}".audit
            FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".audit_append_only()""",
    ]


def lock_id(schema: str) -> int:
    """Advisory lock key serialising one schema's audit writers (stable across processes)."""
    digest = hashlib.sha256(f"tongban-audit:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# -- the chain (pure) --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """The hashed content of one audit row."""

    seq: int
    at: datetime
    actor: str
    role: str
    scope: str | None
    action: str
    case_id: str | None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One stored row: its content and its links."""

    entry: AuditEntry
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The newest row's seq and hash: what to publish as an anchor."""

    seq: int
    hash: str


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def iso(at: datetime) -> str:
    """The hashed form of a time: UTC, microseconds (PostgreSQL's timestamptz precision)."""
    if at.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def entry_hash(prev_hash: str, entry: AuditEntry) -> str:
    content = {
        "seq": entry.seq,
        "at": iso(entry.at),
        "actor": entry.actor,
        "role": entry.role,
        "scope": entry.scope,
        "action": entry.action,
        "case_id": entry.case_id,
        "detail": entry.detail,
    }
    return hashlib.sha256((prev_hash + canonical_json(content)).encode()).hexdigest()


def chain(entries: Iterable[AuditEntry], prev_hash: str = GENESIS_HASH) -> list[AuditRow]:
    """Link entries into rows, as `append` does one at a time (for tests and tools)."""
    rows = []
    for entry in entries:
        row = AuditRow(entry=entry, prev_hash=prev_hash, hash=entry_hash(prev_hash, entry))
        rows.append(row)
        prev_hash = row.hash
    return rows


class ChainReport(Contract):
    ok: bool
    first_broken_seq: int | None = Field(
        default=None, description="The seq of the first broken link (for a gap: the missing one)"
    )
    problem: Problem | None = None
    message: str
    rows_checked: int
    head_seq: int | None = Field(default=None, description="When ok: the newest row's seq")
    head_hash: str | None = Field(default=None, description="When ok: the newest row's hash")


class ChainVerifier:
    """Checks rows fed in seq order; stops at the first broken link. `verify_chain` and
    `check_chain` drive it, so a long chain is checked while streaming, never held whole."""

    def __init__(self, *, anchor: ChainHead | None = None) -> None:
        self.anchor = anchor
        self.rows_checked = 0
        self._last: AuditRow | None = None
        self._failure: tuple[int, Problem, str] | None = None

    @property
    def broken(self) -> bool:
        return self._failure is not None

    def feed(self, row: AuditRow) -> bool:
        """Check the next row; False once the chain is broken (later rows are not looked at)."""
        if self._failure is not None:
            return False
        self.rows_checked += 1
        seq = row.entry.seq
        last = self._last
        expected_seq = 1 if last is None else last.entry.seq + 1
        expected_prev = GENESIS_HASH if last is None else last.hash
        after = "the start" if last is None else f"seq {last.entry.seq}"
        if seq > expected_seq:
            missing = (
                f"seq {expected_seq}"
                if seq == expected_seq + 1
                else f"seq {expected_seq}..{seq - 1}"
            )
            self._fail(expected_seq, "missing", f"{missing} missing after {after}: rows deleted")
        elif seq < expected_seq:
            self._fail(
                seq, "out_of_order", f"seq {seq} follows {after}: rows out of order or duplicated"
            )
        elif row.prev_hash != expected_prev:
            self._fail(
                seq,
                "relinked",
                f"seq {seq}: prev_hash does not match the hash of {after} "
                "(rows deleted and renumbered, reordered, or a row rewritten with a new hash)",
            )
        elif row.hash != entry_hash(row.prev_hash, row.entry):
            self._fail(seq, "altered", f"seq {seq}: content does not match its hash (row altered)")
        elif self.anchor is not None and seq == self.anchor.seq and row.hash != self.anchor.hash:
            self._fail(
                seq,
                "anchor_mismatch",
                f"seq {seq}: hash differs from the published anchor (chain rewritten)",
            )
        else:
            self._last = row
            return True
        return False

    def report(self) -> ChainReport:
        if self._failure is None and self.anchor is not None:
            reached = 0 if self._last is None else self._last.entry.seq
            if reached < self.anchor.seq:
                self._fail(
                    reached + 1,
                    "missing",
                    f"chain ends at seq {reached}, before the anchored seq {self.anchor.seq}: "
                    "newest rows deleted",
                )
        if self._failure is not None:
            seq, problem, message = self._failure
            return ChainReport(
                ok=False,
                first_broken_seq=seq,
                problem=problem,
                message=message,
                rows_checked=self.rows_checked,
            )
        last = self._last
        return ChainReport(
            ok=True,
            message=f"{self.rows_checked} rows, chain intact"
            if last
            else "no audit rows: chain empty",
            rows_checked=self.rows_checked,
            head_seq=last.entry.seq if last else None,
            head_hash=last.hash if last else None,
        )

    def _fail(self, seq: int, problem: Problem, message: str) -> None:
        self._failure = (seq, problem, message)


def verify_chain(rows: Iterable[AuditRow], *, anchor: ChainHead | None = None) -> ChainReport:
    """The first broken link of rows given in seq order, or ok. Deleting the newest rows is
    invisible here unless `anchor` (an earlier published head) is given."""
    verifier = ChainVerifier(anchor=anchor)
    for row in rows:
        if not verifier.feed(row):
            break
    return verifier.report()


# -- writing -----------------------------------------------------------------------------------


def clean_detail(detail: Mapping[str, Any] | None) -> dict[str, Any]:
    """The detail as stored and hashed: personal-looking values masked, JSON that survives a
    JSONB round trip unchanged (no floats: JSONB may print them back differently), small."""
    cleaned = mask_personal_data(detail or {})
    _check_json(cleaned, "detail")
    size = len(canonical_json(cleaned).encode())
    if size > MAX_DETAIL_BYTES:
        raise ValueError(f"audit detail is {size} bytes; keep it under {MAX_DETAIL_BYTES}")
    return cleaned


def _check_json(value: Any, path: str) -> None:
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"audit {path}: keys must be strings, not {key!r}")
            _check_json(item, f"{path}.{key}")
        return
    raise TypeError(f"audit {path}: {type(value).__name__} is not allowed (str, int, bool, None)")


@cache
def _tail_statement(schema: str) -> TextClause:
    # The database clock stamps `at`, so times follow seq across replicas.
    return text(
        "SELECT clock_timestamp() AS now, last.seq, last.hash FROM (SELECT 1) AS one "
        f'LEFT JOIN (SELECT seq, hash FROM "{schema}".audit ORDER BY seq DESC LIMIT 1) AS last '
        "ON true"
    )


async def append(
    session: AsyncSession,
    schema: str,
    *,
    actor: str,
    role: str,
    scope: str | None,
    action: str,
    case_id: str | None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Append one audit row in the caller's transaction: one lock, one small select, one
    insert. `actor` is the token subject; `action` a dotted verb such as "case.read",
    "case.decide", "result.read"."""
    cleaned = clean_detail(detail)
    await session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id(schema)})
    now, last_seq, last_hash = (await session.execute(_tail_statement(schema))).one()
    prev_hash = GENESIS_HASH if last_hash is None else str(last_hash)
    entry = AuditEntry(
        seq=1 if last_seq is None else int(last_seq) + 1,
        at=now,
        actor=actor,
        role=role,
        scope=scope,
        action=action,
        case_id=case_id,
        detail=cleaned,
    )
    await session.execute(
        insert(audit_table(schema)).values(
            seq=entry.seq,
            at=entry.at,
            actor=actor,
            role=role,
            scope=scope,
            action=action,
            case_id=case_id,
            detail=cleaned,
            prev_hash=prev_hash,
            hash=entry_hash(prev_hash, entry),
        )
    )


# -- reading and checking ----------------------------------------------------------------------


def _audit_row(row: Row[Any]) -> AuditRow:
    m = row._mapping
    return AuditRow(
        entry=AuditEntry(
            seq=m["seq"],
            at=m["at"],
            actor=m["actor"],
            role=m["role"],
            scope=m["scope"],
            action=m["action"],
            case_id=m["case_id"],
            detail=m["detail"],
        ),
        prev_hash=m["prev_hash"],
        hash=m["hash"],
    )


async def stream_rows(
    session: AsyncSession, schema: str, *, batch_size: int = 1000
) -> AsyncGenerator[AuditRow, None]:
    """Every row in seq order through a server-side cursor, `batch_size` rows per fetch, all
    from one snapshot (rows appended meanwhile are left for the next check)."""
    table = audit_table(schema)
    result = await session.stream(
        select(table).order_by(table.c.seq).execution_options(yield_per=batch_size)
    )
    try:
        async for partition in result.partitions():
            for row in partition:
                yield _audit_row(row)
    finally:
        await result.close()


async def check_chain(
    session: AsyncSession,
    schema: str,
    *,
    anchor: ChainHead | None = None,
    batch_size: int = 1000,
) -> ChainReport:
    """Verify `<schema>.audit` from seq 1, streaming; stops at the first broken link."""
    verifier = ChainVerifier(anchor=anchor)
    rows = stream_rows(session, schema, batch_size=batch_size)
    try:
        async for row in rows:
            if not verifier.feed(row):
                break
    finally:
        await rows.aclose()
    return verifier.report()


async def head(session: AsyncSession, schema: str) -> ChainHead | None:
    """The newest row's seq and hash (None when empty): publish it periodically as an anchor."""
    table = audit_table(schema)
    row = (
        await session.execute(
            select(table.c.seq, table.c.hash).order_by(table.c.seq.desc()).limit(1)
        )
    ).one_or_none()
    return None if row is None else ChainHead(seq=int(row.seq), hash=str(row.hash))


class AuditRecord(Contract):
    """One audit row as `GET /v1/audit` shows it."""

    seq: int
    at: AwareDatetime
    actor: str = Field(description="The token subject")
    role: str
    scope: str | None
    action: str = Field(description='e.g. "case.read", "case.decide", "result.read"')
    case_id: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(Contract):
    records: list[AuditRecord]
    next_after_seq: int | None = Field(
        description="Pass as after_seq for the next page; null on the last page"
    )


async def read_audit(
    session: AsyncSession,
    schema: str,
    *,
    case_id: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    after_seq: int | None = None,
) -> AuditPage:
    """Audit rows in seq order (oldest first), filtered, one keyset page at a time."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
    table = audit_table(schema)
    query = select(table).order_by(table.c.seq).limit(limit + 1)
    if case_id is not None:
        query = query.where(table.c.case_id == case_id)
    if actor is not None:
        query = query.where(table.c.actor == actor)
    if since is not None:
        query = query.where(table.c.at >= since)
    if after_seq is not None:
        query = query.where(table.c.seq > after_seq)
    rows = (await session.execute(query)).all()
    records = [AuditRecord.model_validate(dict(r._mapping)) for r in rows[:limit]]
    more = len(rows) > limit
    return AuditPage(records=records, next_after_seq=records[-1].seq if more else None)
