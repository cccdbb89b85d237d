"""REST edges shared by every service: health, readiness, metrics, RFC 9457 problem JSON, and
how their errors are described in OpenAPI (`errors()` per route, one Problem schema)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from contracts.common import UNSTORABLE_MESSAGE, Code, is_unstorable
from contracts.rest import ProblemBody
from services.common.failures import is_infrastructure_error
from services.common.http_metrics import HttpMetrics
from services.common.logs import get_logger
from services.common.refusals import Refusal, Refused

log = get_logger(__name__)

PROBLEM_JSON = "application/problem+json"

ReadinessCheck = Callable[[], Awaitable[None]]

CaseId = Annotated[Code, Path(min_length=1, max_length=64, description="the case id")]
"""A `{case_id}` path parameter: a NUL, a control character or 65+ characters is a 422 before
any lookup (never a database error)."""

# OpenAPI: every error response of every operation is problem JSON referencing this one schema
# (contracts.rest.ProblemBody), registered by `document_problems`.
PROBLEM_SCHEMA = "Problem"
PROBLEM_REF = f"#/components/schemas/{PROBLEM_SCHEMA}"

_ERROR_DESCRIPTIONS = {
    400: "The body cannot be read as JSON text at all, e.g. not UTF-8 (`malformed_body`)",
    401: "Missing, expired or invalid bearer token (`unauthenticated`, `invalid_token`, "
    "`token_expired`)",
    403: "Not allowed for this role or scope (`forbidden`, `forbidden_scope`, ...)",
    404: "No such resource, or none the caller may see",
    409: "Conflicts with the resource's state (`invalid_state`, ...)",
    413: "Body larger than the limit (`payload_too_large`)",
    422: "The request is not valid (`invalid_request` with the field list in `errors`, "
    "`invalid_value` for text the database cannot store, or a rule's own code)",
    429: "Too many requests from this client (`rate_limited`); retry after Retry-After",
    502: "An upstream service did not answer, or refused this one (`intake_unavailable`, "
    "`intake_refused`)",
    503: "At capacity, or a dependency is not available; retry after Retry-After",
}

RETRY_AFTER_STATUSES = frozenset({429, 503})
# Retry-After of a 429/503 problem that names none (every such answer carries one).
DEFAULT_RETRY_AFTER_S = 1

_RETRY_AFTER_HEADER = {
    "description": "Seconds to wait before retrying (RFC 9110 §10.2.3)",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}
_WWW_AUTHENTICATE_HEADER = {
    "description": 'The RFC 6750 bearer challenge, e.g. `Bearer realm="tongban", '
    'error="invalid_token", error_description="..."`',
    "required": True,
    "schema": {"type": "string"},
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` of the errors one operation can answer, declared at its route:
    RFC 9457 problem JSON referencing the one Problem schema; a 401 with its
    `WWW-Authenticate`, a 429 or 503 with its `Retry-After`. A 500 is never declared: it is
    a bug, not an answer a client should plan for."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in sorted(statuses):
        if status not in _ERROR_DESCRIPTIONS:
            raise ValueError(f"no problem status {status}: one of {sorted(_ERROR_DESCRIPTIONS)}")
        response: dict[str, Any] = {
            "description": _ERROR_DESCRIPTIONS[status],
            "content": {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}},
        }
        if status == 401:
            response["headers"] = {"WWW-Authenticate": _WWW_AUTHENTICATE_HEADER}
        elif status in RETRY_AFTER_STATUSES:
            response["headers"] = {"Retry-After": _RETRY_AFTER_HEADER}
        responses[status] = response
    return responses


def document_problems(app: FastAPI) -> None:
    """Add the Problem schema that `errors()` responses reference to the app's OpenAPI
    document (FastAPI registers only the models it sees, and would file a model given in
    `responses` under `application/json`)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            schema = ProblemBody.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(schema.pop("$defs", {}))
            schemas[PROBLEM_SCHEMA] = {**schema, "title": PROBLEM_SCHEMA}
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


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
    retry_after = problem.extra.get("retry_after")
    if retry_after is None and problem.status in RETRY_AFTER_STATUSES:
        retry_after = DEFAULT_RETRY_AFTER_S  # the OpenAPI document promises one on each
    return JSONResponse(
        problem.body(str(request.url.path) if request else None),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers={"Retry-After": str(retry_after)} if retry_after is not None else None,
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
    """Every error a tongban app answers as problem JSON (`Problem`), with a stable code."""
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(Refused, on_refused)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(DBAPIError, _on_database_data_error)
    # Failures of the database or the network are answered inside the app. A handler for
    # `Exception` runs in Starlette's outermost middleware, which re-raises after answering,
    # and uvicorn then closes the connection: a client that had already sent its next
    # request on it got a reset instead of an answer (seen under overload, when the pool
    # timed out).
    # asyncpg's own errors too: the hot statements run on asyncpg directly (common/rows.py).
    app.add_exception_handler(asyncpg.PostgresError, _on_database_data_error)
    for infrastructure in (OSError, asyncpg.InterfaceError, SQLAlchemyError):
        app.add_exception_handler(infrastructure, _on_failure)
    app.add_exception_handler(Exception, _on_unexpected)


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc, request)


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "field": _field(err.get("loc", ())),
            "message": UNSTORABLE_MESSAGE if is_unstorable(err) else err.get("msg", ""),
            "type": "invalid_value" if is_unstorable(err) else err.get("type", ""),
        }
        for err in exc.errors()
    ]
    summary = "; ".join(f"{e['field'] or '(body)'}: {e['message']}" for e in errors[:5])
    if any(e["type"] == "invalid_value" for e in errors):
        # Text tongban could not store or publish: the same code as a value PostgreSQL
        # refuses, so a client fixes both the same way; `errors` names the fields.
        return problem_response(
            Problem(422, "invalid_value", "A value cannot be stored", summary, errors=errors),
            request,
        )
    return problem_response(
        Problem(422, "invalid_request", "The request is not valid", summary, errors=errors),
        request,
    )


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    codes = {
        400: "malformed_body",  # FastAPI's answer to a body it cannot decode
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
    }
    code = codes.get(exc.status_code, f"http_{exc.status_code}")
    return problem_response(Problem(exc.status_code, code, str(exc.detail)), request)


async def _on_database_data_error(request: Request, exc: Exception) -> Response:
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
    return await _on_failure(request, exc)


async def _on_failure(request: Request, exc: Exception) -> Response:
    """Database and network failures (and what looks like them), answered in the app."""
    if is_infrastructure_error(exc):
        log.warning(
            "dependency unavailable: answered 503",
            path=request.url.path,
            error=f"{type(exc).__name__}: {exc}"[:300],
        )
        return problem_response(dependency_unavailable(), request)
    log.error("unexpected error: answered 500", path=request.url.path, exc_info=exc)
    return _internal_error(request)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    """Anything else: Starlette re-raises it after this answer and uvicorn logs it."""
    if is_infrastructure_error(exc):
        return problem_response(dependency_unavailable(), request)
    return _internal_error(request)


def _internal_error(request: Request) -> Response:
    return problem_response(
        Problem(500, "internal_error", "Internal error", "The error was logged; retry later."),
        request,
    )


def _field(loc: Sequence[int | str]) -> str:
    """`applicant.name`, `materials.0.code`, `path.case_id`: the body's own fields unprefixed
    (and a field that is itself called `body` kept)."""
    return ".".join(str(p) for p in (loc[1:] if loc[:1] == ("body",) else loc))


def _is_data_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, asyncpg.exceptions.DataError):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str]


def install_http_metrics(app: FastAPI, *, service: str) -> None:
    """Request counts and latency by route template (services.common.http_metrics). Call it
    after the other middleware: the outermost layer also counts what they refuse."""
    app.add_middleware(HttpMetrics, service=service)


def install_health_routes(app: FastAPI, checks: dict[str, ReadinessCheck]) -> None:
    """`/healthz` (the process answers), `/readyz` (its dependencies answer), `/metrics`.

    They declare no error response: they need no token, take no input and are never shed.
    Readiness's 503 is its documented answer for "not ready" (what orchestrators and load
    balancers act on), with the same body as the 200, not a problem."""

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Readiness,
        tags=["ops"],
        responses={
            503: {"model": Readiness, "description": "Not ready: a dependency does not answer"}
        },
    )
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


def problem_of(refusal: Refusal) -> Problem:
    """The problem JSON of a domain refusal (services.common.refusals)."""
    return Problem(
        refusal.status,
        refusal.code,
        refusal.title,
        refusal.detail,
        errors=[e.as_dict() for e in refusal.errors],
        **refusal.extra,
    )


async def on_refused(request: Request, exc: Exception) -> Response:
    """The app's answer to a handler's `Refused`: its refusal as problem JSON."""
    assert isinstance(exc, Refused)
    return problem_response(problem_of(exc.refusal), request)
