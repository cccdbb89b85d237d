"""console: the operators' web console (port 8000): live event stream, case timelines, SLA
board, triage queue, dead letters and consumer lag, on one page with no build step.

Run: `tongban console` (or `python -m services.console`), then open http://127.0.0.1:8000.

Who may open it: the console has no login of its own. In dev/test it listens on localhost
and is open to whoever can reach that port. In production it runs behind the city's SSO /
reverse proxy, which authenticates operators; it shows only what an operator may see (every
personal field masked). It calls the services with the operator token
`TONGBAN_CONSOLE_TOKEN`, required outside dev/test; in dev/test it mints its own.

API (JSON; the page's only data source):
- `GET /api/stream` Server-Sent Events of case events (and dead letters), masked, filtered by
  `case`, `type`, `department`, `office`, `district`, `path` (each one value or a
  comma-separated list), from now on or `?from=<ISO time>`.
- `GET /api/cases/{case_id}` intake's view of a case with its whole timeline (masked).
- `GET /api/triage`, `GET /api/sla`, `GET /api/dlq`, `GET /api/lag`, `GET /api/catalog`:
  `{"available": true, ...}` or `{"available": false, "reason": ...}`, so the page shows
  what answers and says what does not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import Field, SecretStr, model_validator
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from contracts.catalog import Catalog
from contracts.events import EVENT_TYPES, CatalogPublished
from services.common.auth import AuthSettings, Role, mint_token
from services.common.catalog_follower import CatalogFollower
from services.common.city import CITY_TZ
from services.common.kafka import ReadableFetch
from services.common.limits import DEFAULT_MAX_HEAD_BYTES
from services.common.logs import get_logger
from services.common.settings import CommonSettings
from services.common.web import (
    Problem,
    document_problems,
    errors,
    install_health_routes,
    install_http_metrics,
    install_problem_handlers,
)
from services.console.kafka_views import STREAM_TOPICS, KafkaViews
from services.console.stream import CaseLookup, LiveStream, sse
from services.operators.event_facts import CaseMemory, EventFilter
from services.policy.catalog_index import CatalogIndex

log = get_logger(__name__)

STATIC = FilePath(__file__).resolve().parent / "static"
FilterValue = Annotated[str | None, Query(max_length=2000)]
CaseId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


class ConsoleSettings(CommonSettings):
    service: str = "console"
    http_port: int = 8000
    intake_url: str = "http://127.0.0.1:8001"
    routing_url: str = "http://127.0.0.1:8002"
    approval_url: str = "http://127.0.0.1:8003"
    console_token: SecretStr | None = Field(
        None, description="operator bearer token for the services; required outside dev/test"
    )
    upstream_timeout_s: float = Field(5.0, gt=0)
    http_max_head_bytes: int = Field(
        DEFAULT_MAX_HEAD_BYTES, ge=1024, description="request line + headers; over it: 431"
    )
    kafka_timeout_s: float = Field(10.0, gt=0)
    stream_max_clients: int = Field(20, ge=1, description="open live streams at once")
    stream_keepalive_s: float = Field(15.0, gt=0)
    dlq_recent: int = Field(20, ge=0, le=500, description="dead letters listed")

    @model_validator(mode="after")
    def _token_outside_dev(self) -> ConsoleSettings:
        if not self.is_dev and self.console_token is None:
            raise ValueError(
                "outside dev/test set TONGBAN_CONSOLE_TOKEN: an operator token from the "
                "identity provider (the console mints its own only in dev/test)"
            )
        return self


class OperatorToken:
    """The bearer token the console shows the services: `TONGBAN_CONSOLE_TOKEN`, or in
    dev/test one minted here (role operator) and minted again before it expires."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.fixed = settings.console_token
        self._auth: AuthSettings | None = None if self.fixed is not None else AuthSettings()
        self._token = ""
        self._renew_at = 0.0

    def header(self) -> dict[str, str]:
        if self.fixed is not None:
            return {"Authorization": f"Bearer {self.fixed.get_secret_value()}"}
        assert self._auth is not None
        if time.monotonic() >= self._renew_at:
            self._token = mint_token(self._auth, subject="tongban-console", role=Role.operator)
            self._renew_at = time.monotonic() + self._auth.auth_token_ttl_s / 2
        return {"Authorization": f"Bearer {self._token}"}


def _catalog_index(published: CatalogPublished) -> CatalogIndex:
    return CatalogIndex(Catalog.model_validate(published.catalog))


class SecurityHeaders(BaseHTTPMiddleware):
    """Same-origin scripts, styles and connections only: nothing is loaded from elsewhere."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if not request.url.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-cache")  # revalidate (ETag)
        return response


class Console:
    """The console's state: upstream client, Kafka views, catalog copy, what it learned."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self.token = OperatorToken(settings)
        self.http: httpx.AsyncClient | None = None
        self.kafka = KafkaViews(settings, timeout_s=settings.kafka_timeout_s)
        self.catalogs: CatalogFollower[CatalogIndex] = CatalogFollower(settings, _catalog_index)
        self.facts = CaseMemory(capacity=20_000)
        self.lookup = CaseLookup(self.fetch_case_view)
        self.streams = 0
        self.closing = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.http = httpx.AsyncClient(timeout=self.settings.upstream_timeout_s)
        self._tasks.append(asyncio.create_task(self._follow_catalog(), name="catalog-follower"))

    async def stop(self) -> None:
        self.closing.set()
        self.catalogs.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.kafka.close()
        if self.http is not None:
            await self.http.aclose()

    async def _follow_catalog(self) -> None:
        """The latest catalog (for the district filter and names), from catalog.v1; retried
        while Kafka is unreachable, so the console starts without it."""
        while not self.closing.is_set():
            try:
                await self.catalogs.start(timeout=30)
                await self.catalogs.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("catalog follower failed; retrying", error=repr(exc))
                await asyncio.sleep(5)

    async def upstream(self, url: str, params: Mapping[str, Any] | None = None) -> httpx.Response:
        assert self.http is not None, "start() first"
        return await self.http.get(url, params=params, headers=self.token.header())

    async def fetch_case_view(self, case_id: str) -> Mapping[str, Any] | None:
        answer = await self.upstream(f"{self.settings.intake_url}/v1/cases/{quote(case_id)}")
        if answer.status_code != 200:
            return None
        body: Mapping[str, Any] = answer.json()
        return body


async def _available(what: str, compute: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """`{"available": true, ...}`, or `{"available": false, "reason": ...}` when it fails."""
    try:
        return {"available": True, **await compute()}
    except Exception as exc:
        log.warning("console view unavailable", view=what, error=repr(exc))
        return {"available": False, "reason": f"{what}: {_reason(exc)}"}


def _retry_after(answer: httpx.Response) -> int:
    try:
        return max(1, int(answer.headers.get("retry-after", "1")))
    except ValueError:  # an HTTP date: not what tongban sends
        return 1


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or exc.__class__.__name__


def create_app(settings: ConsoleSettings | None = None) -> FastAPI:
    settings = settings or ConsoleSettings()
    console = Console(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await console.start()
        try:
            yield
        finally:
            await console.stop()

    app = FastAPI(
        title="tongban operator console",
        description=__doc__,
        version="1.0.0",
        lifespan=lifespan,
    )
    app.state.console = console
    install_problem_handlers(app)
    document_problems(app)
    app.add_middleware(SecurityHeaders)

    async def kafka_answers() -> None:
        await console.kafka.lag()

    install_health_routes(app, {"kafka": kafka_answers})

    @app.get(
        "/api/stream",
        tags=["console"],
        response_class=StreamingResponse,
        responses=errors(422, 503),
    )
    async def stream(
        request: Request,
        case: FilterValue = None,
        type: FilterValue = None,
        department: FilterValue = None,
        office: FilterValue = None,
        district: FilterValue = None,
        path: FilterValue = None,
        start: Annotated[datetime | None, Query(alias="from")] = None,
    ) -> StreamingResponse:
        """Live case events as Server-Sent Events: `event: ready` once the reader is
        positioned, then one `data:` JSON line per event that passes the filters."""
        if console.streams >= settings.stream_max_clients:
            raise Problem(
                503,
                "too_many_streams",
                "Too many live streams open",
                f"at most {settings.stream_max_clients}; close a console tab",
                retry_after=5,
            )
        if start is not None and start.tzinfo is None:
            start = start.replace(tzinfo=CITY_TZ)
        filters = EventFilter.parse(
            case=case,
            type=type,
            department=department,
            office=office,
            district=district,
            path=path,
        )
        live = LiveStream(
            filters,
            facts=console.facts,
            lookup=console.lookup,
            catalog=lambda: console.catalogs.latest,
        )
        return StreamingResponse(
            _events(console, live, request, start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/api/cases/{case_id}", tags=["console"], responses=errors(404, 422, 502, 503))
    async def case_view(case_id: CaseId) -> JSONResponse:
        """Intake's view of the case (status, route, deadline, whole timeline), masked.
        Intake's 404 and 503 come through as they are; any other refusal (the console's own
        token refused, say) is the console's problem with intake: 502."""
        try:
            answer = await console.upstream(f"{settings.intake_url}/v1/cases/{quote(case_id)}")
        except httpx.HTTPError as exc:
            raise Problem(
                502, "intake_unavailable", "Intake does not answer", _reason(exc)
            ) from None
        if answer.status_code == 503:
            raise Problem(
                503,
                "intake_unavailable",
                "Intake is not available",
                "Intake answered 503; retry after the given seconds.",
                retry_after=_retry_after(answer),
            )
        if answer.status_code not in (200, 404):
            raise Problem(
                502,
                "intake_refused",
                "Intake refused the console's request",
                f"intake answered {answer.status_code} to GET /v1/cases/{{case_id}}",
            )
        return JSONResponse(
            answer.json(),
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type", "application/json"),
        )

    @app.get("/api/triage", tags=["console"])
    async def triage() -> dict[str, Any]:
        """Cases routing could not route (routing's triage queue), newest first."""

        async def compute() -> dict[str, Any]:
            answer = await console.upstream(
                f"{settings.routing_url}/v1/triage", params={"limit": 200}
            )
            answer.raise_for_status()
            return {"rows": answer.json()}

        return await _available("routing's triage queue", compute)

    @app.get("/api/sla", tags=["console"])
    async def sla() -> dict[str, Any]:
        """Approval's SLA board: per department, cases open, warned, overdue, without a
        deadline, and the next deadline."""

        async def compute() -> dict[str, Any]:
            answer = await console.upstream(f"{settings.approval_url}/v1/sla/board")
            if answer.status_code == 404:
                raise LookupError("approval has no SLA board (GET /v1/sla/board answered 404)")
            answer.raise_for_status()
            return {"rows": answer.json()}

        return await _available("approval's SLA board", compute)

    @app.get("/api/dlq", tags=["console"])
    async def dlq() -> dict[str, Any]:
        """How many records the dead-letter topic holds, and the latest with their reasons."""
        return await _available(
            "the dead-letter topic", lambda: console.kafka.dead_letters(settings.dlq_recent)
        )

    @app.get("/api/lag", tags=["console"])
    async def lag() -> dict[str, Any]:
        """Every consumer group's lag per topic and partition (end offset minus committed)."""

        async def compute() -> dict[str, Any]:
            rows = await console.kafka.lag()
            return {"rows": rows, "total": sum(r["lag"] or 0 for r in rows)}

        return await _available("consumer lag", compute)

    @app.get("/api/meta", tags=["console"])
    async def meta() -> dict[str, Any]:
        """What the page needs to know about this console: environment, event types."""
        return {
            "environment": settings.environment,
            "event_types": sorted(
                t for t, spec in EVENT_TYPES.items() if spec.topic in STREAM_TOPICS
            ),
            "topics": list(STREAM_TOPICS),
        }

    @app.get("/api/catalog", tags=["console"])
    async def catalog() -> dict[str, Any]:
        """Codes and names of the catalog in force, for the filters and tables."""

        async def compute() -> dict[str, Any]:
            index = console.catalogs.latest
            if index is None:
                raise LookupError("no catalog version read from catalog.v1 yet")
            c = index.catalog
            return {
                "version": console.catalogs.latest_version,
                "city": {"code": c.city.code, "name": c.city.name},
                "districts": [{"code": d.code, "name": d.name} for d in c.districts],
                "offices": [
                    {"code": o.code, "kind": o.kind.value, "division": o.division}
                    for o in c.offices
                ],
                "departments": [
                    {"code": d.code, "name": d.name, "level": d.level.value} for d in c.departments
                ],
            }

        return await _available("the catalog", compute)

    app.mount("/", StaticFiles(directory=STATIC, html=True), name="static")
    install_http_metrics(app, service=settings.service)
    return app


async def _events(
    console: Console, live: LiveStream, request: Request, start: datetime | None
) -> AsyncIterator[str]:
    settings = console.settings
    console.streams += 1
    try:
        try:
            consumer, partitions = await console.kafka.open_stream(start)
        except Exception as exc:
            log.warning("live stream cannot start", error=repr(exc))
            yield "retry: 3000\n\n" + sse(
                {"detail": f"cannot read the case topics: {_reason(exc)}"}, event="problem"
            )
            return
        try:
            yield "retry: 3000\n\n" + sse(
                {
                    "partitions": partitions,
                    "from": start.isoformat() if start else None,
                    "filters": live.filters.describe(),
                    "catalog_version": console.catalogs.latest_version,
                    "now": datetime.now(UTC).isoformat(),
                },
                event="ready",
            )
            quiet_since = time.monotonic()
            fetch = ReadableFetch(consumer)  # steps over (and logs) records nobody can parse
            while not console.closing.is_set() and not await request.is_disconnected():
                batch = await fetch.getmany(timeout_ms=500, max_records=500)
                # Per partition in order; across partitions by time (one case's events can
                # sit on several topics).
                records = sorted(
                    (r for found in batch.values() for r in found), key=lambda r: r.timestamp
                )
                for record in records:
                    line = await live.line(record)
                    if line is not None:
                        yield sse(line, event_id=line["id"])
                        quiet_since = time.monotonic()
                if time.monotonic() - quiet_since > settings.stream_keepalive_s:
                    yield ": keepalive\n\n"
                    quiet_since = time.monotonic()
        finally:
            await consumer.stop()
    finally:
        console.streams -= 1


def serve(settings: ConsoleSettings) -> None:
    """Run the console under uvicorn. Live streams never end by themselves, so shutdown
    waits only briefly for them."""
    import uvicorn

    from services.common.http_head import bounded_http
    from services.common.logs import configure_logging

    configure_logging(service=settings.service, level=settings.log_level, json=settings.log_json)
    uvicorn.run(
        "services.console.app:create_app",
        factory=True,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=3,
        http=bounded_http(settings.http_max_head_bytes),  # as the services: 431 past the limit
    )
