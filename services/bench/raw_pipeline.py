"""The raw case pipeline's four processes: tongban's case path (services/bench/raw_shape.py)
with no framework, the limit the bench compares tongban to.

The guarantees are tongban's, kept the plainest way:
- a submission is one transaction (one statement): idempotency key, case, outbox row; a
  replayed Idempotency-Key answers the case it made, and makes nothing;
- every event goes through an outbox: its row commits with the state change that made it; one
  relay per process publishes the rows in id order with an idempotent producer, waits for the
  acks, then deletes them (the delete of one batch and the read of the next are one statement);
- every application is part of a consumer batch applied in one transaction with its inbox rows
  (`ON CONFLICT DO NOTHING`: a redelivered event changes nothing); offsets are committed after
  the commit.

Each process is a plain asyncio program on uvloop: asyncpg (a pool; asyncpg prepares and caches
every statement) and aiokafka; intake's endpoint is a bare ASGI callable under uvicorn with
httptools. No FastAPI, SQLAlchemy or pydantic: only what the path needs. A record's body is
decoded only by a consumer that applies it and needs its fields (routing, approval, delivery);
the timeline stores the bytes as they came.

Left out, as a limit should: token verification and schema validation beyond the body's shape,
the domain's rules (every case is routed online and approved at once), dead letters and
retries (the pipeline reads only its own records; a failing part stops its process and the
bench with it), spans, metrics and logs per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing.sharedctypes
import multiprocessing.synchronize
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import uvicorn
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from services.bench import raw_shape as shape
from services.bench.raw_shape import Outgoing


@dataclass(frozen=True)
class PipelineConfig:
    dsn: str  # asyncpg DSN
    kafka: dict[str, Any]  # aiokafka connection options (plain values: bootstrap, protocol)
    schema: str
    topic_prefix: str  # topics are <prefix>.<role>
    group_prefix: str
    partitions: int = 12
    max_records: int = 500  # tongban's consumer_max_records
    poll_ms: int = 200  # tongban's consumer_poll_ms
    outbox_batch: int = 500  # tongban's outbox_batch_size
    pool_size: int = 8
    host: str = "127.0.0.1"

    def topic(self, role: str) -> str:
        return f"{self.topic_prefix}.{role}"

    def role_of(self, topic: str) -> str:
        return topic.rsplit(".", 1)[-1]

    @property
    def topics(self) -> list[str]:
        return [self.topic(r) for r in shape.TOPIC_ROLES]


def ddl(schema: str) -> list[str]:
    """The pipeline's tables: each process's state, inbox and outbox, in one schema."""
    s = f'"{schema}"'
    statements = [
        f"CREATE SCHEMA {s}",
        f"""CREATE TABLE {s}.intake_idempotency_keys (
            key text PRIMARY KEY, case_id text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now())""",
        f"""CREATE TABLE {s}.intake_cases (
            case_id text PRIMARY KEY, item_code text NOT NULL, application jsonb NOT NULL,
            status text NOT NULL, step smallint NOT NULL, submitted_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now())""",
        f"""CREATE TABLE {s}.intake_timeline (
            event_id text PRIMARY KEY, case_id text NOT NULL, type text NOT NULL,
            time timestamptz NOT NULL, source text NOT NULL, data jsonb NOT NULL)""",
        f"CREATE INDEX ON {s}.intake_timeline (case_id)",
        f"""CREATE TABLE {s}.routing_routes (
            case_id text PRIMARY KEY, item_code text NOT NULL, handled_by text NOT NULL,
            route jsonb NOT NULL, decided_at timestamptz NOT NULL)""",
        f"""CREATE TABLE {s}.routing_cross_region_cases (
            case_id text PRIMARY KEY, partner_city text NOT NULL)""",
        f"""CREATE TABLE {s}.approval_cases (
            case_id text PRIMARY KEY, department text NOT NULL, status text NOT NULL,
            accepted_at timestamptz NOT NULL, decided_at timestamptz NOT NULL)""",
        f"""CREATE TABLE {s}.delivery_results (
            case_id text PRIMARY KEY, kind text NOT NULL, license_id text, sha256 text NOT NULL,
            result jsonb NOT NULL, issued_at timestamptz NOT NULL)""",
    ]
    for process in shape.PROCESSES:
        statements += [
            f"""CREATE TABLE {s}.{process}_inbox (
                consumer text NOT NULL, event_id text NOT NULL, topic text NOT NULL,
                processed_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (consumer, event_id))""",
            f"""CREATE TABLE {s}.{process}_outbox (
                id bigserial PRIMARY KEY, topic text NOT NULL, event_id text NOT NULL,
                type text NOT NULL, case_id text NOT NULL, time text NOT NULL,
                traceparent text NOT NULL, handled_by text, value bytea NOT NULL)""",
        ]
    return statements


class _Sql:
    """The statements of one process (schema-qualified once)."""

    def __init__(self, schema: str, process: str) -> None:
        s = f'"{schema}"'
        self.inbox = f"""
            INSERT INTO {s}.{process}_inbox (consumer, event_id, topic)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
            ON CONFLICT DO NOTHING RETURNING consumer, event_id"""
        self.outbox = f"""
            INSERT INTO {s}.{process}_outbox
                (topic, event_id, type, case_id, time, traceparent, handled_by, value)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::text[], $7::text[], $8::bytea[])"""
        self.relay = f"""
            WITH published AS (DELETE FROM {s}.{process}_outbox WHERE id = ANY($1::bigint[]))
            SELECT id, topic, event_id, type, case_id, time, traceparent, handled_by, value
            FROM {s}.{process}_outbox WHERE id <> ALL($1::bigint[]) ORDER BY id LIMIT $2"""
        self.delete_published = f"DELETE FROM {s}.{process}_outbox WHERE id = ANY($1::bigint[])"
        # One statement, so one transaction: the key, the case, its submitted event.
        self.submit = f"""
            WITH k AS (
                INSERT INTO {s}.intake_idempotency_keys (key, case_id) VALUES ($1, $2)
                ON CONFLICT DO NOTHING RETURNING case_id),
            c AS (
                INSERT INTO {s}.intake_cases
                    (case_id, item_code, application, status, step, submitted_at)
                SELECT case_id, $3, $4::jsonb, 'submitted', 0, $5 FROM k),
            o AS (
                INSERT INTO {s}.intake_outbox
                    (topic, event_id, type, case_id, time, traceparent, handled_by, value)
                SELECT $6, $7, $8, case_id, $9, $10, NULL, $11 FROM k)
            SELECT case_id FROM k"""
        self.submit_without_key = f"""
            WITH c AS (
                INSERT INTO {s}.intake_cases
                    (case_id, item_code, application, status, step, submitted_at)
                VALUES ($1, $2, $3::jsonb, 'submitted', 0, $4))
            INSERT INTO {s}.intake_outbox
                (topic, event_id, type, case_id, time, traceparent, handled_by, value)
            VALUES ($5, $6, $7, $1, $8, $9, NULL, $10)"""
        self.replayed = f"SELECT case_id FROM {s}.intake_idempotency_keys WHERE key = $1"
        self.timeline = f"""
            INSERT INTO {s}.intake_timeline (event_id, case_id, type, time, source, data)
            SELECT e, c, t, tm::timestamptz, src, convert_from(d, 'UTF8')::jsonb
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[])
                AS u(e, c, t, tm, src, d)
            ON CONFLICT DO NOTHING RETURNING event_id"""
        self.case_steps = f"""
            UPDATE {s}.intake_cases AS c SET status = u.status, step = u.step, updated_at = now()
            FROM unnest($1::text[], $2::smallint[], $3::text[]) AS u(case_id, step, status)
            WHERE c.case_id = u.case_id AND c.step < u.step"""
        self.cross_region = (
            f"SELECT case_id FROM {s}.routing_cross_region_cases WHERE case_id = ANY($1::text[])"
        )
        self.routes = f"""
            INSERT INTO {s}.routing_routes (case_id, item_code, handled_by, route, decided_at)
            SELECT c, i, h, convert_from(r, 'UTF8')::jsonb, now()
            FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[]) AS u(c, i, h, r)
            ON CONFLICT DO NOTHING"""
        self.approvals = f"""
            INSERT INTO {s}.approval_cases (case_id, department, status, accepted_at, decided_at)
            SELECT c, d, 'approved', now(), now()
            FROM unnest($1::text[], $2::text[]) AS u(c, d)
            ON CONFLICT DO NOTHING"""
        self.results = f"""
            INSERT INTO {s}.delivery_results (case_id, kind, license_id, sha256, result, issued_at)
            SELECT c, k, l, h, convert_from(r, 'UTF8')::jsonb, now()
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[])
                AS u(c, k, l, h, r)
            ON CONFLICT DO NOTHING"""


def now() -> datetime:
    return datetime.now(UTC)


# -- the outbox relay ------------------------------------------------------------------------------


class Relay:
    """Publishes a process's outbox rows in id order, then deletes them (module docstring).
    Woken by the process itself after each commit that wrote rows; polls every 0.5 s too."""

    def __init__(self, cfg: PipelineConfig, sql: _Sql, producer: AIOKafkaProducer) -> None:
        self.cfg = cfg
        self.sql = sql
        self.producer = producer
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        conn: asyncpg.Connection = await asyncpg.connect(self.cfg.dsn)
        published: list[int] = []
        try:
            while not self._stopping:
                self._wake.clear()
                rows = await conn.fetch(self.sql.relay, published, self.cfg.outbox_batch)
                published = await self._publish(rows)
                # As tongban's relay: all there was out, its delete goes with the next read.
                wait = 0.5 if not rows else 0.1 if len(rows) < self.cfg.outbox_batch else 0
                if wait:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
            if published:
                await conn.execute(self.sql.delete_published, published)
        finally:
            await conn.close()

    async def _publish(self, rows: Sequence[asyncpg.Record]) -> list[int]:
        if not rows:
            return []
        futures = []
        for row in rows:
            event = Outgoing(
                row["topic"],
                row["type"],
                row["event_id"],
                row["case_id"],
                row["time"],
                row["traceparent"],
                row["handled_by"],
                row["value"],
            )
            futures.append(
                await self.producer.send(
                    self.cfg.topic(event.topic),
                    key=event.case_id.encode(),
                    value=event.value,
                    headers=shape.headers(event),
                )
            )
        await asyncio.gather(*futures)
        return [row["id"] for row in rows]


async def insert_outbox(conn: asyncpg.Connection, sql: _Sql, events: Sequence[Outgoing]) -> None:
    if not events:
        return
    await conn.execute(
        sql.outbox,
        [e.topic for e in events],
        [e.event_id for e in events],
        [e.type for e in events],
        [e.case_id for e in events],
        [e.time for e in events],
        [e.traceparent for e in events],
        [e.handled_by for e in events],
        [e.value for e in events],
    )


# -- the consumers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Incoming:
    """A record some consumer of the process applies (only its headers read so far)."""

    record: ConsumerRecord[bytes, bytes]
    consumers: tuple[str, ...]
    type: str
    event_id: str
    case_id: str
    traceparent: str


Apply = Callable[
    [asyncpg.Connection, _Sql, Sequence[Incoming], set[tuple[str, str]]], Awaitable[list[Outgoing]]
]


def _fresh_for(
    work: Sequence[Incoming], fresh: set[tuple[str, str]], consumer: str, type_: str | None = None
) -> list[Incoming]:
    """The batch's records `consumer` applies now: its inbox row was new, first of each id."""
    chosen = [
        w for w in work if (consumer, w.event_id) in fresh and (type_ is None or w.type == type_)
    ]
    return [chosen[n] for n in shape.first_of_each(w.event_id for w in chosen)]


async def apply_intake(
    conn: asyncpg.Connection, sql: _Sql, work: Sequence[Incoming], fresh: set[tuple[str, str]]
) -> list[Outgoing]:
    """intake-timeline: a timeline row per event, each case's row updated once per batch."""
    events = _fresh_for(work, fresh, "intake-timeline")
    if not events:
        return []
    # The timeline is the reader's own inbox: the events it did not hold yet are applied.
    inserted = await conn.fetch(
        sql.timeline,
        [e.event_id for e in events],
        [e.case_id for e in events],
        [e.type for e in events],
        [shape.header(e.record.headers, "ce_time") or "" for e in events],
        [shape.source_of(e.type) for e in events],
        [e.record.value for e in events],
    )
    new = {r["event_id"] for r in inserted}
    latest = shape.latest_steps((e.case_id, e.type) for e in events if e.event_id in new)
    await conn.execute(
        sql.case_steps,
        list(latest),
        [step for step, _ in latest.values()],
        [status for _, status in latest.values()],
    )
    return []


async def apply_routing(
    conn: asyncpg.Connection, sql: _Sql, work: Sequence[Incoming], fresh: set[tuple[str, str]]
) -> list[Outgoing]:
    """routing-intake: each submitted case routed."""
    replies = []
    routes: list[tuple[str, str, str, bytes]] = []
    for item in _fresh_for(work, fresh, "routing-intake", shape.SUBMITTED):
        submitted = _decode(item)
        at = now()
        route = shape.route_for(submitted, now=at)
        replies.append(
            shape.routed_reply(
                submitted, route, traceparent=shape.child_traceparent(item.traceparent), now=at
            )
        )
        code = str(submitted["application"]["item_code"])
        routes.append((item.case_id, code, str(route["handled_by"]), shape.dumps(route)))
    if routes:
        await conn.execute(sql.routes, *(list(column) for column in zip(*routes, strict=True)))
    return replies


async def apply_approval(
    conn: asyncpg.Connection, sql: _Sql, work: Sequence[Incoming], fresh: set[tuple[str, str]]
) -> list[Outgoing]:
    """approval-routing: each routed instant case accepted and approved."""
    replies: list[Outgoing] = []
    cases: list[tuple[str, str]] = []
    for item in _fresh_for(work, fresh, "approval-routing", shape.ROUTED):
        routed = _decode(item)
        replies += shape.approval_replies(
            routed, traceparent=shape.child_traceparent(item.traceparent), now=now()
        )
        cases.append((item.case_id, str(routed["route"]["handled_by"])))
    if cases:
        await conn.execute(sql.approvals, [c for c, _ in cases], [d for _, d in cases])
    return replies


async def apply_delivery(
    conn: asyncpg.Connection, sql: _Sql, work: Sequence[Incoming], fresh: set[tuple[str, str]]
) -> list[Outgoing]:
    """delivery-approval: each approval's e-licence issued, delivered, the case closed."""
    replies: list[Outgoing] = []
    results: list[tuple[str, dict[str, Any]]] = []
    for item in _fresh_for(work, fresh, "delivery-approval", shape.APPROVED):
        own = shape.delivery_replies(
            _decode(item), traceparent=shape.child_traceparent(item.traceparent), now=now()
        )
        replies += own
        results.append((item.case_id, shape.result_of(own)))
    if results:
        await conn.execute(
            sql.results,
            [c for c, _ in results],
            [str(r["kind"]) for _, r in results],
            [r.get("license_id") for _, r in results],
            [str(r["sha256"]) for _, r in results],
            [shape.dumps(r) for _, r in results],
        )
    return replies


def _decode(item: Incoming) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(item.record.value)
    return data


APPLY: dict[str, Apply] = {
    shape.INTAKE: apply_intake,
    shape.ROUTING: apply_routing,
    shape.APPROVAL: apply_approval,
    shape.DELIVERY: apply_delivery,
}


def _incoming(
    record: ConsumerRecord[bytes, bytes], appliers: dict[str, tuple[str, ...]]
) -> Incoming | None:
    """The record if a consumer of the process applies its type, from its headers alone."""
    pairs = list(record.headers or ())
    type_ = shape.header(pairs, "ce_type")
    consumers = appliers.get(type_ or "")
    if not consumers or type_ is None:
        return None
    return Incoming(
        record,
        consumers,
        type_,
        shape.header(pairs, "ce_id") or "",
        record.key.decode() if record.key else "",
        shape.header(pairs, "traceparent") or shape.new_traceparent(),
    )


async def consume(
    cfg: PipelineConfig,
    process: str,
    pool: asyncpg.Pool,
    relay: Relay,
    joined: asyncio.Event,
    stopping: Callable[[], bool],
) -> None:
    """The process's one consumer group: batch -> one transaction -> offsets committed."""
    sql = _Sql(cfg.schema, process)
    apply = APPLY[process]
    appliers = shape.appliers(process)
    own_inboxes = shape.own_inboxes(process)
    looks_up = shape.looks_up_partners(process)
    consumer = AIOKafkaConsumer(
        *[cfg.topic(t) for t in shape.topics_read(process)],
        **cfg.kafka,
        group_id=f"{cfg.group_prefix}-{process}",
        client_id=f"raw-{process}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=cfg.max_records,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
    )
    await consumer.start()
    try:
        while not stopping():
            batch = await consumer.getmany(timeout_ms=cfg.poll_ms, max_records=cfg.max_records)
            if consumer.assignment():
                joined.set()
            if not batch:
                continue
            if looks_up:
                await _look_up_partners(pool, sql, batch.values())
            work = [
                w
                for records in batch.values()
                for r in records
                if (w := _incoming(r, appliers)) is not None
            ]
            if work:
                inboxed = [(c, w) for w in work for c in w.consumers if c not in own_inboxes]
                async with pool.acquire() as conn, conn.transaction():
                    rows = (
                        await conn.fetch(
                            sql.inbox,
                            [c for c, _ in inboxed],
                            [w.event_id for _, w in inboxed],
                            [w.record.topic for _, w in inboxed],
                        )
                        if inboxed
                        else []
                    )
                    fresh = {(r["consumer"], r["event_id"]) for r in rows}
                    fresh |= {
                        (c, w.event_id) for w in work for c in w.consumers if c in own_inboxes
                    }
                    replies = await apply(conn, sql, work, fresh)
                    await insert_outbox(conn, sql, replies)
                if replies:
                    relay.wake()
            await consumer.commit({tp: recs[-1].offset + 1 for tp, recs in batch.items() if recs})
    finally:
        await consumer.stop()


async def _look_up_partners(
    pool: asyncpg.Pool, sql: _Sql, batch: Iterable[list[ConsumerRecord[bytes, bytes]]]
) -> None:
    """routing-xregion: the batch's cases across regions, one read outside any transaction
    (none is, on this path: every record is passed over, with no inbox row)."""
    cases = sorted({r.key.decode() for records in batch for r in records if r.key})
    async with pool.acquire() as conn:
        await conn.fetch(sql.cross_region, cases)


# -- intake's endpoint -----------------------------------------------------------------------------


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class IntakeEndpoint:
    """`POST /v1/cases` as a bare ASGI callable: checks, one statement, 201 {"case_id": ...};
    `GET /healthz` for the bench to see it up."""

    def __init__(self, cfg: PipelineConfig, pool: asyncpg.Pool, relay: Relay) -> None:
        self.cfg = cfg
        self.pool = pool
        self.relay = relay
        self.sql = _Sql(cfg.schema, shape.INTAKE)
        self.topic = shape.INTAKE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/healthz":
            await _answer(send, 200, b'{"status":"ok"}')
            return
        if path != "/v1/cases":
            await _problem(send, shape.NOT_FOUND)
            return
        if method != "POST":
            await _problem(send, shape.METHOD_NOT_ALLOWED)
            return
        body = await _body(receive)
        checked = shape.check_submission(dict(scope["headers"]), body)
        if isinstance(checked, shape.Problem):
            await _problem(send, checked)
            return
        status, case_id = await self.submit(checked)
        await _answer(send, status, b'{"case_id":"' + case_id.encode() + b'"}')

    async def submit(self, submission: shape.Submission) -> tuple[int, str]:
        at = now()
        case_id = shape.new_case_id(at)
        submitted_at = shape.rfc3339(at)
        value = shape.submitted_value(case_id, submitted_at, submission.body)
        event = (
            self.topic,
            str(uuid.uuid4()),
            shape.SUBMITTED,
            submitted_at,
            shape.new_traceparent(),
            value,
        )
        async with self.pool.acquire() as conn:
            if submission.idempotency_key is None:
                await conn.execute(
                    self.sql.submit_without_key,
                    case_id,
                    submission.item_code,
                    submission.body.decode(),
                    at,
                    *event,
                )
            else:
                made = await conn.fetchval(
                    self.sql.submit,
                    submission.idempotency_key,
                    case_id,
                    submission.item_code,
                    submission.body.decode(),
                    at,
                    *event,
                )
                if made is None:  # a replay: the case this key made
                    earlier = await conn.fetchval(self.sql.replayed, submission.idempotency_key)
                    return 200, str(earlier)
        self.relay.wake()
        return 201, case_id


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(
    send: Send, status: int, body: bytes, content_type: bytes = b"application/json"
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="tongban"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _problem(send: Send, problem: shape.Problem) -> None:
    await _answer(send, problem.status, problem.body(), b"application/problem+json")


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Pool release without asyncpg's default reset (RESET ALL, UNLISTEN, ...: a round trip
    per request): nothing here changes a session's state, and an open transaction is still
    rolled back by the pool itself."""


# -- one process -----------------------------------------------------------------------------------


def process_main(
    config: dict[str, Any],
    process: str,
    ready: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
    port: multiprocessing.sharedctypes.Synchronized[int] | None = None,
) -> None:
    """Process entry point (spawned): run `process` until `stop` is set; `ready` once its
    consumer has its partitions (and intake listens; its port in `port`)."""
    uvloop.run(_run(PipelineConfig(**config), process, ready, stop, port))


async def _run(
    cfg: PipelineConfig,
    process: str,
    ready: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
    port: multiprocessing.sharedctypes.Synchronized[int] | None,
) -> None:
    pool = await asyncpg.create_pool(
        cfg.dsn, min_size=2, max_size=cfg.pool_size, reset=_keep_session
    )
    producer = AIOKafkaProducer(
        **cfg.kafka,
        client_id=f"raw-{process}-relay",
        enable_idempotence=True,
        acks="all",
        linger_ms=2,  # as tongban's make_producer
        max_batch_size=256 * 1024,
    )
    await producer.start()
    relay = Relay(cfg, _Sql(cfg.schema, process), producer)
    joined = asyncio.Event()
    tasks = [
        asyncio.create_task(relay.run()),
        asyncio.create_task(consume(cfg, process, pool, relay, joined, stop.is_set)),
    ]
    server: uvicorn.Server | None = None
    if process == shape.INTAKE:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((cfg.host, 0))
        if port is not None:
            port.value = sock.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(
                IntakeEndpoint(cfg, pool, relay),
                http="httptools",
                loop="none",
                lifespan="off",
                access_log=False,
                proxy_headers=False,
                server_header=False,
                log_level="warning",
                backlog=4096,
            )
        )
        tasks.append(asyncio.create_task(server.serve(sockets=[sock])))
    try:
        while not stop.is_set():
            if joined.is_set() and (server is None or server.started):
                ready.set()
            if any(t.done() for t in tasks):
                break  # a part died: its exception surfaces below
            await asyncio.sleep(0.1)
    finally:
        if server is not None:
            server.should_exit = True
        relay.stop()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        await producer.stop()
        await pool.close()
    for outcome in done:
        if isinstance(outcome, BaseException):
            raise outcome
