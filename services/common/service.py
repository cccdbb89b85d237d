"""Wiring of one service process: database, outbox relay, consumers, catalog copy, HTTP.

Every service builds a `ServiceRuntime` in its `app.py`, registers its consumers, and hands
`runtime.lifespan` to FastAPI; `serve()` runs it under uvicorn. Startup migrates the service's
schema (as its owner when TONGBAN_MIGRATION_DATABASE_URL is given, see migrations.py) and
creates missing topics, so a fresh machine needs no manual step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import uvicorn
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.common import Code
from contracts.events import EVENT_TYPES, XREGION_TOPIC, CatalogPublished, Event
from services.common import audit, migrations
from services.common.auth import (
    AuthSettings,
    Principal,
    Role,
    authenticated,
    install_auth_handlers,
    require,
)
from services.common.catalog_follower import CatalogFollower
from services.common.clock import ServiceClock
from services.common.consumer import (
    BatchHandlerFn,
    BeforeBatchFn,
    ConsumerGroup,
    ConsumerRunner,
    HandlerFn,
    RelevantFn,
    Subscription,
)
from services.common.db import inbox_key, make_engine, make_sessionmaker, runtime_metadata
from services.common.dlq import DeadLetterWriter, LetterShape
from services.common.envelope import Envelope
from services.common.handover import HandoverSettings
from services.common.http_head import bounded_http
from services.common.inbox import CATALOG_FOLLOWER, InboxPruner
from services.common.kafka import (
    PARTNER_XREGION_PATTERN,
    ensure_topics,
    make_producer,
    standard_topics,
)
from services.common.limits import BodySizeLimit, LimitSettings, LoadShedder, max_body_bytes
from services.common.logs import configure_logging, get_logger
from services.common.metrics import DEAD_LETTERS, DEAD_LETTERS_TRUNCATED, TASK_RESTARTS
from services.common.outbox import Outbox, OutboxRelay
from services.common.partner_catalogs import PartnerCatalogs
from services.common.tracing import (
    TraceRequests,
    TracingSettings,
    configure_tracing,
    current_traceparent,
)
from services.common.web import (
    document_problems,
    errors,
    install_health_routes,
    install_http_metrics,
    install_problem_handlers,
)

log = get_logger(__name__)
T = TypeVar("T")
S = TypeVar("S", bound="ServiceSettings")


class ServiceSettings(HandoverSettings, AuthSettings, LimitSettings, TracingSettings):
    """What every service process reads from `TONGBAN_*`: the shared runtime, bearer-token
    authentication, request limits, tracing and the entrusted-handover keys."""


class ServiceRuntime:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.schema = settings.service
        # "Now" for every time-based rule of the service (shifted in dev and test only).
        self.clock = ServiceClock.shifted_by(settings.clock_offset_s)
        self.engine = make_engine(settings)
        self.sessions = make_sessionmaker(
            self.engine, ambiguous_commit_rate=settings.fault_ambiguous_commit_rate
        )
        self.outbox = Outbox(self.schema)
        self.relay = OutboxRelay(settings, schema=self.schema)
        self.consumers: list[ConsumerRunner] = []
        self._groups: list[ConsumerGroup] | None = None
        self._startup: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._background: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._stoppers: list[Callable[[], None]] = []
        self.inbox_pruner = InboxPruner(settings, sessions=self.sessions, schema=self.schema)
        self.background(self.inbox_pruner.run, self.inbox_pruner.stop)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stopped = asyncio.Event()  # cuts short a dead letter waiting for the broker
        self._dlq_producer: AIOKafkaProducer | None = None
        self.source = f"/tongban/{settings.service}"

    async def audit(
        self,
        session: AsyncSession,
        principal: Principal,
        action: str,
        case_id: str | None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Append to this service's hash-chained audit trail, in the caller's transaction."""
        await audit.append(
            session,
            self.schema,
            actor=principal.subject,
            role=principal.role.value,
            scope=principal.scope,
            action=action,
            case_id=case_id,
            detail=detail,
        )

    # -- registration --------------------------------------------------------------------------

    def consume(
        self,
        *topics: str,
        subscriptions: Mapping[type[Event], HandlerFn],
        name: str | None = None,
        ignored_types: Iterable[str] | None = None,
        batch_handler: BatchHandlerFn | None = None,
        accept: Callable[[Envelope], bool] | None = None,
        relevant: RelevantFn | None = None,
        own_inbox: bool = False,
        before_batch: BeforeBatchFn | None = None,
    ) -> ConsumerRunner:
        """A consumer group of this service, applying each event class with its handler;
        types on the topics it does not handle are ignored (they are contract types, just not
        this consumer's business). `accept`, when given, passes over the records it refuses
        before they are validated or reach the inbox: a group that wants few of a topic's
        records pays nothing for the others. `relevant` does the same for records only the
        service's tables can tell apart (read once per batch, in its transaction). With
        `own_inbox`, the handlers record the events they applied themselves (`ConsumerRunner`).
        `before_batch` runs first in the transaction of a batch of several events."""
        stray = [model.__name__ for model in subscriptions if model.TOPIC not in topics]
        if stray:
            raise ValueError(f"{', '.join(stray)} not on {', '.join(topics)}")
        by_type = {model.TYPE: Subscription(fn, model) for model, fn in subscriptions.items()}
        known = {t for t, e in EVENT_TYPES.items() if e.topic in topics}
        runner = ConsumerRunner(
            self.settings,
            name=name or f"{self.settings.service}-{'-'.join(t.split('.')[1] for t in topics)}",
            topics=topics,
            subscriptions=by_type,
            sessions=self.sessions,
            schema=self.schema,
            ignored_types=ignored_types if ignored_types is not None else known - set(by_type),
            batch_handler=batch_handler,
            accept=accept,
            relevant=relevant,
            own_inbox=own_inbox,
            before_batch=before_batch,
        )
        self.consumers.append(runner)
        return runner

    def consume_partners(
        self,
        *,
        name: str,
        subscriptions: Mapping[type[Event], HandlerFn],
        own_city: Callable[[], str | None],
    ) -> ConsumerRunner:
        """A consumer group over the partner regions' mirrored `xregion.out.v1` topics
        (`<alias>.xregion.out.v1`, DESIGN.md §9): the records addressed to this region
        (`ce_tocity` = `own_city()`, the city of the catalog in force) go to their handlers,
        whatever their type's home topic (a relayed case event keeps its type); records for
        other regions, and types this group does not handle, are passed over. Until the
        region has a catalog nothing is addressed to it: the group joins only once it has."""
        by_type = {model.TYPE: Subscription(fn, model) for model, fn in subscriptions.items()}

        async def city_known() -> None:
            while own_city() is None:
                await asyncio.sleep(1)

        def addressed_here(envelope: Envelope) -> bool:
            return envelope.tocity is not None and envelope.tocity == own_city()

        runner = ConsumerRunner(
            self.settings,
            name=name,
            topics=(),
            pattern=PARTNER_XREGION_PATTERN,
            accept=addressed_here,
            starts_when=city_known,
            subscriptions=by_type,
            sessions=self.sessions,
            schema=self.schema,
            ignored_types=set(EVENT_TYPES) - set(by_type),
        )
        self.consumers.append(runner)
        return runner

    def follow_catalog(self, build: Callable[[CatalogPublished], T]) -> CatalogFollower[T]:
        """This process's copy of the catalog (`catalog.v1`), its unreadable records
        dead-lettered once per service (see `dead_letter_once`)."""
        return CatalogFollower(self.settings, build, on_unreadable=self.dead_letter_once)

    def follow_partner_catalogs(
        self, build: Callable[[CatalogPublished], T], *, own_city: Callable[[], str | None]
    ) -> PartnerCatalogs[T]:
        """The partner regions' catalogs (`<alias>.catalog.v1`, DESIGN.md §9), started with
        the service and kept up in the background."""
        partners = PartnerCatalogs(
            self.settings, build, own_city=own_city, on_unreadable=self.dead_letter_once
        )
        self.on_startup(partners.start)
        self.background(partners.run, partners.stop)
        return partners

    async def dead_letter_once(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        """Dead-letter a record read outside a consumer group (every replica reads the whole
        compacted catalog topic, at every start): the inbox row keyed by its position makes
        the first reader of this service send it, and nobody again (the inbox pruner keeps
        these rows: the compacted topic keeps the record)."""
        inbox = runtime_metadata(self.schema)[2]
        position = f"{record.topic}/{record.partition}/{record.offset}"
        async with self.sessions() as session, session.begin():
            fresh = await session.execute(
                pg_insert(inbox)
                .values(consumer=CATALOG_FOLLOWER, event_id=inbox_key(position), topic=record.topic)
                .on_conflict_do_nothing()
                .returning(inbox.c.event_id)
            )
            if fresh.scalar() is None:
                return
            producer = self._dlq_producer
            if producer is None:
                producer = make_producer(self.settings, client_id="catalog-dlq")
                await producer.start()
                self._dlq_producer = producer
            letters = DeadLetterWriter(
                producer,
                topic=self.settings.dlq_topic,
                max_bytes=self.settings.dlq_max_record_bytes,
                retry_backoff_max_s=self.settings.consumer_retry_backoff_max_s,
            )
            shape = await letters.write(
                record, reason, f"{self.settings.service}/{CATALOG_FOLLOWER}", stop=self._stopped
            )
            if shape is None:  # stopping: roll the mark back, the next start sends it
                raise RuntimeError("stopped before the catalog dead letter was stored")
        if shape is not LetterShape.WHOLE:
            DEAD_LETTERS_TRUNCATED.labels(
                self.settings.service, CATALOG_FOLLOWER, record.topic
            ).inc()
        DEAD_LETTERS.labels(self.settings.service, CATALOG_FOLLOWER, record.topic).inc()

    def on_startup(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._startup.append(fn)

    def background(
        self, fn: Callable[[], Coroutine[Any, Any, None]], stop: Callable[[], None]
    ) -> None:
        self._background.append(fn)
        self._stoppers.append(stop)

    # -- emitting events -----------------------------------------------------------------------

    def envelope(
        self,
        payload: Event,
        *,
        subject: str | None = None,
        handledby: str | None = None,
        traceparent: str | None = None,
        tocity: str | None = None,
        fromcity: str | None = None,
    ) -> tuple[str, Envelope]:
        """`tocity`/`fromcity`: a record for a partner region on xregion.out.v1 (DESIGN.md §9)."""
        spec = EVENT_TYPES.get(getattr(payload, "TYPE", ""))
        if spec is None or type(payload) is not spec.model:
            # e.g. DecisionOutcome, the base of two events, or a subclass of an event
            raise TypeError(f"{type(payload).__name__} is not an event of contracts.events")
        event_type = spec.type
        if bool(handledby) != spec.handledby:
            # contracts/asyncapi.yaml tells consumers which types carry it: keep that true.
            raise TypeError(
                f"{event_type} {'needs' if spec.handledby else 'carries no'} ce_handledby"
            )
        # Case events are about their case, bundle events about their bundle (§8).
        subject = subject or str(getattr(payload, "case_id", None) or getattr(payload, "bundle_id"))  # noqa: B009
        # The span applying this request or event is the parent of whoever handles the new
        # event; `traceparent` (the incoming one) only serves when no span is current.
        traceparent = current_traceparent() or traceparent
        return spec.topic, Envelope(
            type=event_type,
            source=self.source,
            subject=subject,
            data=payload.model_dump(mode="json"),
            time=self.clock.now(),  # the rows written with the event carry the same clock
            handledby=handledby,
            traceparent=traceparent,
            tocity=tocity,
            fromcity=fromcity,
        )

    async def emit(self, session: AsyncSession, payload: Event, **kwargs: Any) -> Envelope:
        """Write the event into the outbox in the caller's transaction: its type and topic
        are those of the payload's class."""
        topic, envelope = self.envelope(payload, **kwargs)
        await self.outbox.add(session, topic, envelope)
        return envelope

    async def relay_to_partner(
        self, session: AsyncSession, envelope: Envelope, *, to_city: str, from_city: str
    ) -> None:
        """Put a case event on `xregion.out.v1` for partner `to_city` (DESIGN.md §9), in the
        caller's transaction: unchanged (same id, type, source, subject, data, time), with
        `ce_tocity` and `ce_fromcity`. At least once, like everything on the link: the
        partner's inbox makes a second copy a no-op."""
        relayed = dataclasses.replace(envelope, tocity=to_city, fromcity=from_city)
        # The outbox row's own id (64 characters), one per event and partner.
        row_id = hashlib.sha256(f"{envelope.id}>{to_city}".encode()).hexdigest()
        await self.outbox.add(session, XREGION_TOPIC, relayed, outbox_id=row_id)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._migrate)
        await ensure_topics(self.settings, standard_topics())
        for fn in self._startup:
            await fn()
        self._stopping = False
        self._stopped.clear()
        self._supervise("outbox-relay", self.relay.run)
        for group in self.consumer_groups():
            self._supervise(group.group_id, group.run)
        for fn in self._background:
            self._supervise(getattr(fn, "__name__", "background"), fn)
        log.info("service started", service=self.settings.service)

    def consumer_groups(self) -> list[ConsumerGroup]:
        """One consumer group for all the readers of the service's own topics (one fetch for
        all of them, DESIGN.md §2; it starts where their former groups of one each stand), and
        a group of its own for each reader of a pattern (the partners' mirrored topics, which
        appear later) or with a start condition."""
        if self._groups is not None:
            return self._groups
        shared = [r for r in self.consumers if r.pattern is None and r.starts_when is None]
        groups = (
            [
                ConsumerGroup(
                    self.settings,
                    group_id=f"{self.settings.service}-events",
                    readers=shared,
                    seed_from=[r.group_id for r in shared],
                )
            ]
            if shared
            else []
        )
        groups += [reader.own_group() for reader in self.consumers if reader not in shared]
        self._groups = groups
        return groups

    def _migrate(self) -> None:
        owner_url, url = self.settings.migration_database_url, self.settings.database_url
        if owner_url:
            migrations.migrate(self.schema, owner_url, migrations.role_of(url))
        elif not migrations.is_current(self.schema, url):
            log.info("schema behind its migrations; migrating as the service's own role")
            try:
                migrations.upgrade(self.schema, url)
            except Exception as exc:
                if getattr(getattr(exc, "orig", None), "sqlstate", None) != "42501":
                    raise
                # A run-time role that owns nothing cannot migrate: say what to do instead.
                raise RuntimeError(
                    f"the {self.schema} schema is behind its migrations and this service's "
                    "database role may not change it: run `tongban migrate` as the schema "
                    "owner first, or give the service TONGBAN_MIGRATION_DATABASE_URL"
                ) from exc

    def _supervise(self, name: str, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a long-lived loop; if it crashes on something unforeseen (a broker error
        surfacing from a client library, say), log it and start it again with backoff, so
        one bad moment never leaves a process alive but no longer consuming."""

        async def supervised() -> None:
            backoff = 1.0
            while True:
                try:
                    await fn()
                    return
                except Exception as exc:
                    if self._stopping:
                        raise
                    TASK_RESTARTS.labels(self.settings.service, name).inc()
                    log.error(
                        "task crashed; restarting", task=name, error=repr(exc), retry_in_s=backoff
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)

        self._tasks.append(asyncio.create_task(supervised(), name=name))

    async def stop(self) -> None:
        self._stopping = True
        self._stopped.set()
        for runner in self.consumers:
            runner.stop()
        for stop in self._stoppers:
            stop()
        self.relay.stop()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for task, result in zip(self._tasks, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("task ended with error", task=task.get_name(), error=repr(result))
        if self._dlq_producer is not None:
            await self._dlq_producer.stop()
        await self.engine.dispose()

    @asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    def _install_audit_routes(self, app: FastAPI) -> None:
        # Depends() as the default (not in an Annotated alias): this module postpones
        # annotations, and a local alias could not be resolved by FastAPI.
        caller = Depends(authenticated)

        @app.get(
            "/v1/audit",
            response_model=audit.AuditPage,
            tags=["audit"],
            responses=errors(401, 403, 422, 503),
        )
        async def read_audit(
            principal: Principal = caller,
            case_id: Annotated[Code | None, Query(max_length=64)] = None,
            actor: Annotated[Code | None, Query(max_length=200)] = None,
            after_seq: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
            limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        ) -> audit.AuditPage:
            """Who read or decided what, when (admins only): reads of cases with personal
            data and decisions, oldest first; page with `after_seq`."""
            require(principal, Role.admin)
            async with self.sessions() as session:
                return await audit.read_audit(
                    session,
                    self.schema,
                    case_id=case_id,
                    actor=actor,
                    after_seq=after_seq,
                    limit=limit,
                )

        @app.get(
            "/v1/audit/verify",
            response_model=audit.ChainReport,
            tags=["audit"],
            responses=errors(401, 403, 503),
        )
        async def verify_audit(principal: Principal = caller) -> audit.ChainReport:
            """Check the whole hash chain (admins only): the first altered, missing or
            relinked row, if any."""
            require(principal, Role.admin)
            async with self.sessions() as session:
                return await audit.check_chain(session, self.schema)

    async def check_database(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def check_consumers(self) -> None:
        dead = [t.get_name() for t in self._tasks if t.done()]
        if dead:
            raise RuntimeError(f"stopped: {dead}")
        if not all(r.ready.is_set() for r in self.consumers):
            raise RuntimeError("consumers not yet in their group")

    def create_app(
        self,
        *,
        title: str,
        description: str,
        routers: Iterable[APIRouter] = (),
        service: object = None,
    ) -> FastAPI:
        """The service's FastAPI app: its `routers` (the service's api.py), the audit routes,
        health, metrics and the shared middleware. `service` (the service's parts: runtime,
        catalog copy...) is what the routes' dependency reads from `app.state.service`."""
        app = FastAPI(
            title=title,
            description=description,
            version="1.0.0",
            lifespan=self.lifespan,
            # FastAPI's own telemetry would add a second server span and three internal spans
            # to every request (probes included) once a global tracer provider is set:
            # TraceRequests below is the one server span, and carries the caller's trace
            # through even when tracing is off.
            telemetry={"tracing": False, "metrics": False, "logs": False},
        )
        app.state.auth_settings = self.settings
        app.state.service = service
        app.state.runtime = self
        install_problem_handlers(app)
        for router in routers:
            app.include_router(router)
        self._install_audit_routes(app)
        install_auth_handlers(app)
        app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes(self.settings))
        app.add_middleware(TraceRequests)
        # Outermost but for the HTTP metrics: a request refused for load costs no body
        # parsing and no database.
        app.add_middleware(
            LoadShedder,
            max_in_flight=self.settings.http_max_in_flight,
            queue_timeout_s=self.settings.http_queue_timeout_s,
        )
        install_health_routes(app, {"database": self.check_database, "kafka": self.check_consumers})
        document_problems(app)
        # Around everything, so refusals (413, 429, 503) are counted and timed too.
        install_http_metrics(app, service=self.settings.service)
        return app


async def service_parts(request: Request) -> Any:
    """The service's parts (`app.state.service`, given to `ServiceRuntime.create_app`): every
    api.py reads them through this dependency, typed by its own alias (`RoutingDep =
    Annotated[Routing, Depends(service_parts)]`). Async, so FastAPI answers it inline instead
    of in its thread pool."""
    return request.app.state.service


def serve(create_app: Callable[[S], FastAPI], settings: S) -> None:
    """Run a service under uvicorn; SIGTERM drains HTTP, then stops consumers gracefully. The
    app is built after logging is configured, from the settings given."""
    configure_logging(service=settings.service, level=settings.log_level, json=settings.log_json)
    provider = configure_tracing(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=20,
        # Longer than clients keep idle connections (httpx: 5 s), so the client always closes
        # first: no request is ever sent on a connection the server is closing at that moment.
        timeout_keep_alive=settings.http_keep_alive_s,
        # httptools, with the request head bounded and problem JSON for what the server
        # refuses itself (431, malformed HTTP).
        http=bounded_http(settings.http_max_head_bytes),
    )
    if provider is not None:
        provider.shutdown()  # flush the spans still batched for the collector
