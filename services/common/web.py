"""REST edges shared by every service: health, readiness, metrics, RFC 9457 problem JSON."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator.metrics import Info
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.failures import is_infrastructure_error
from services.common.logs import get_logger
from services.common.metrics import HTTP_REQUESTS, HTTP_SECONDS

log = get_logger(__name__)

PROBLEM_JSON = "application/problem+json"

ReadinessCheck = Callable[[], Awaitable[None]]

_PROBLEM_STATUSES = {
    400: "Bad request",
    401: "Missing, expired or invalid bearer token",
    403: "Not allowed for this role or scope",
    404: "No such resource",
    409: "Conflicts with the resource's state",
    413: "Body larger than the limit",
    422: "The request is not valid (field list in `errors`)",
    429: "Too many requests (see Retry-After)",
    500: "Internal error",
    503: "A dependency is not available (see Retry-After)",
}


def problem_responses() -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` every route may answer with: RFC 9457 problem JSON."""
    from contracts.rest import ProblemBody

    schema = ProblemBody.model_json_schema(ref_template="#/components/schemas/{model}")
    return {
        status: {
            "description": description,
            "content": {PROBLEM_JSON: {"schema": schema}},
        }
        for status, description in _PROBLEM_STATUSES.items()
    }


class Problem(Exception):
    """An error a client can act on: HTTP status, stable machine `code`, and what to fix."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str | None = None,
        *,
        errors: Sequence[dict[str, Any]] = (),
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.errors = list(errors)
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://tongban.example/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "code": self.code,
        }
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body["errors"] = self.errors
        body.update(self.extra)
        return body


def problem_response(problem: Problem, request: Request | None = None) -> JSONResponse:
    return JSONResponse(
        problem.body(str(request.url.path) if request else None),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers={"Retry-After": str(problem.extra["retry_after"])}
        if "retry_after" in problem.extra
        else None,
    )


def dependency_unavailable() -> Problem:
    """503 for a database or network failure: the client retries, with the same
    Idempotency-Key where it has one, because a write's outcome may be unknown."""
    return Problem(
        503,
        "service_unavailable",
        "A dependency is not available",
        "The database or the event broker did not answer in time; the request may or may "
        "not have been applied. Retry after the given seconds; a submission retried with "
        "the same Idempotency-Key is never applied twice.",
        retry_after=1,
    )


def install_problem_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return problem_response(exc, request)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {
                "field": ".".join(str(p) for p in err.get("loc", ()) if p != "body"),
                "message": err.get("msg", ""),
                "type": err.get("type", ""),
            }
            for err in exc.errors()
        ]
        summary = "; ".join(f"{e['field'] or '(body)'}: {e['message']}" for e in errors[:5])
        return problem_response(
            Problem(422, "invalid_request", "The request is not valid", summary, errors=errors),
            request,
        )

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        code = codes.get(exc.status_code, f"http_{exc.status_code}")
        return problem_response(Problem(exc.status_code, code, str(exc.detail)), request)

    async def on_database_data_error(request: Request, exc: Exception) -> Response:
        # A value PostgreSQL cannot store (a NUL character, a number out of range...): the
        # client sent it, nothing was written (the transaction failed), so it is a 422.
        if _is_data_error(exc):
            return problem_response(
                Problem(
                    422,
                    "invalid_value",
                    "A value cannot be stored",
                    "A field holds a character or number outside what tongban accepts "
                    "(e.g. a NUL character, or a number too large). Fix the value and resend.",
                ),
                request,
            )
        return await on_failure(request, exc)

    async def on_failure(request: Request, exc: Exception) -> Response:
        """Database and network failures (and what looks like them), answered in the app."""
        if is_infrastructure_error(exc):
            log.warning(
                "dependency unavailable: answered 503",
                path=request.url.path,
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
            return problem_response(dependency_unavailable(), request)
        log.error("unexpected error: answered 500", path=request.url.path, exc_info=exc)
        return internal_error(request)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        """Anything else: Starlette re-raises it after this answer and uvicorn logs it."""
        if is_infrastructure_error(exc):
            return problem_response(dependency_unavailable(), request)
        return internal_error(request)

    def internal_error(request: Request) -> Response:
        return problem_response(
            Problem(500, "internal_error", "Internal error", "The error was logged; retry later."),
            request,
        )

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(DBAPIError, on_database_data_error)
    # Failures of the database or the network are answered inside the app. A handler for
    # `Exception` runs in Starlette's outermost middleware, which re-raises after answering,
    # and uvicorn then closes the connection: a client that had already sent its next
    # request on it got a reset instead of an answer (seen under overload, when the pool
    # timed out).
    for infrastructure in (OSError, asyncpg.InterfaceError, asyncpg.PostgresError, SQLAlchemyError):
        app.add_exception_handler(infrastructure, on_failure)
    app.add_exception_handler(Exception, on_unexpected)


def _is_data_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, asyncpg.exceptions.DataError):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


UNMATCHED_ROUTE = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def install_http_metrics(app: FastAPI, *, service: str) -> None:
    """`tongban_http_requests_total` and `tongban_http_request_duration_seconds` for every
    request, by route template, method and status. Call it after the other middleware: the
    outermost layer also counts what they refuse (413, 429, 503).

    prometheus-fastapi-instrumentator finds the template (routers, prefixes, root path) and
    times the request; the metrics are ours (one set per process, labelled by service). Labels
    stay few and free of anything a client typed: a request no route took (404, or a
    trailing-slash redirect, for which the library would report the raw path) counts under
    `<unmatched>`; one served by a mounted app (the console's static files) under
    `<mount>/{path}`, as FastAPI names it; an unknown method under `OTHER`."""

    def observe(info: Info) -> None:
        scope = info.request.scope
        # The router puts the endpoint of the route or mount it chose into the scope, and a
        # mount its own path into root_path (the library names a mount by that path, or
        # not at all for a mount at "/").
        mount = str(scope.get("root_path", ""))
        if "endpoint" not in scope:
            route = UNMATCHED_ROUTE
        elif info.modified_handler.startswith("/") and info.modified_handler != mount:
            route = info.modified_handler
        else:
            route = mount.rstrip("/") + "/{path}"
        method = info.method if info.method in _METHODS else "OTHER"
        labels = (service, method, route, info.modified_status)
        HTTP_REQUESTS.labels(*labels).inc()
        HTTP_SECONDS.labels(*labels).observe(info.modified_duration)

    Instrumentator(should_group_status_codes=False, should_group_untemplated=True).add(
        observe
    ).instrument(app)


def install_health_routes(app: FastAPI, checks: dict[str, ReadinessCheck]) -> None:
    """`/healthz` (the process answers), `/readyz` (its dependencies answer), `/metrics`."""

    @app.get("/healthz", include_in_schema=True, tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=True, tags=["ops"])
    async def readyz() -> JSONResponse:
        results: dict[str, str] = {}
        ready = True
        for name, check in checks.items():
            try:
                await check()
                results[name] = "ok"
            except Exception as exc:
                ready = False
                results[name] = f"failing: {exc.__class__.__name__}"
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": results},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
