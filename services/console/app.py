"""console: the operators' web console (port 8000): live event stream, case timelines, SLA
board, triage queue, dead letters, consumer lag, bundles and the links to partner regions, on
one page with no build step.

Run: `tongban console` (or `python -m services.console`), then open http://127.0.0.1:8000.

Who may open it: the console has no login of its own. In dev/test it listens on localhost
and is open to whoever can reach that port. In production it runs behind the city's SSO /
reverse proxy, which authenticates operators; it shows only what an operator may see (every
personal field masked). It calls the services with the operator token
`TONGBAN_CONSOLE_TOKEN`, required outside dev/test; in dev/test it mints its own.

API (JSON; the page's only data source):
- `GET /api/stream` Server-Sent Events of case and bundle events (and dead letters, and what
  partner regions address to this one on `<alias>.xregion.out.v1`), masked,
  filtered by `case`, `type`, `department`, `office`, `district`, `path`, `bundle` (each one
  value or a comma-separated list), from now on or `?from=<ISO time>`.
- `GET /api/cases/{case_id}` intake's view of a case with its whole timeline (masked).
- `GET /api/bundles` the bundle board (一件事, from `bundle.v1` and the members' case events):
  one row per bundle with its members; `GET /api/bundles/{bundle_id}` intake's view of one.
- `GET /api/links` the links to partner regions (跨省通办, MirrorMaker 2): per partner, its
  city and the ages of the newest heartbeat and forwarded record that crossed.
- `GET /api/triage`, `GET /api/sla`, `GET /api/dlq`, `GET /api/lag`, `GET /api/catalog`:
  `{"available": true, ...}` or `{"available": false, "reason": ...}`, so the page shows
  what answers and says what does not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from services.common.web import (
    document_problems,
    install_health_routes,
    install_http_metrics,
    install_problem_handlers,
)
from services.console.routes import router
from services.console.state import Console
from services.console.state import ConsoleSettings as ConsoleSettings  # for create_app's callers

STATIC = Path(__file__).resolve().parent / "static"


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
    app.state.console = console  # what the routes work with (routes.py)
    install_problem_handlers(app)
    document_problems(app)
    app.add_middleware(SecurityHeaders)

    async def kafka_answers() -> None:
        await console.kafka.lag()

    install_health_routes(app, {"kafka": kafka_answers})
    app.include_router(router)
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="static")
    install_http_metrics(app, service=settings.service)
    return app


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
