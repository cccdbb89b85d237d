"""Edge limits: request bodies over 1 MiB get 413, and a client over its rate gets 429 (a
request head over `http_max_head_bytes` gets 431 from the HTTP server: `http_head`).

`BodySizeLimit` is ASGI middleware that `ServiceRuntime.create_app` installs in every service.
A declared `Content-Length` over the limit is refused before a byte of the body is read; a
body without one (chunked) is counted as it streams and refused once it passes the limit. The
answer is RFC 9457 problem JSON with code `payload_too_large`.

`RateLimiter` is a token bucket per client key, in process: O(1) per request, at most
`max_clients` buckets (the least recently seen client is forgotten first; it comes back with a
full bucket, which a client idle long enough to be evicted would have anyway). `rate_limited`
turns it into a FastAPI dependency answering 429 `rate_limited` with `Retry-After`.

The limit is per process: N replicas behind a load balancer let a client through at up to N
times the rate. That is deliberate. The limiter protects each process's own capacity (event
loop, database pool) from a runaway client, and that capacity grows with N as well; a shared
counter (Redis, the database) would put a network round trip and a new failure mode on every
request. A hard city-wide quota per client belongs in the ingress or API gateway.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi import Depends, Request
from prometheus_client import Counter
from pydantic import Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.settings import CommonSettings
from services.common.web import Problem, problem_response

MIB = 1024 * 1024
DEFAULT_MAX_BODY_BYTES = MIB
# The request line and headers together (services.common.http_head); a bearer token, a
# traceparent and the usual headers take about 1 KiB.
DEFAULT_MAX_HEAD_BYTES = 32 * 1024

REJECTED = Counter(
    "tongban_http_rejected_total",
    "Requests refused at the edge, by reason (payload_too_large, rate_limited, overloaded, "
    "request_header_too_large, malformed_request)",
    ["reason"],
)


class LimitSettings(CommonSettings):
    """The edge limits; a service's settings class may inherit it to make them settable."""

    http_max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1)
    http_max_head_bytes: int = Field(
        DEFAULT_MAX_HEAD_BYTES, ge=1024, description="request line + headers; over it: 431"
    )
    rate_limit_per_s: float = Field(50.0, gt=0, description="sustained requests per client")
    rate_limit_burst: int = Field(100, ge=1, description="requests a client may send at once")
    rate_limit_max_clients: int = Field(10_000, ge=1, description="buckets kept (LRU)")
    # Load shedding: requests served at once by a process, and how long an extra request may
    # wait for a slot before it is answered 503 + Retry-After instead of timing out.
    http_max_in_flight: int = Field(16, ge=1)
    http_queue_timeout_s: float = Field(0.5, ge=0)


def max_body_bytes(settings: CommonSettings) -> int:
    """The body limit of any settings object: its `http_max_body_bytes`, else 1 MiB."""
    value = getattr(settings, "http_max_body_bytes", DEFAULT_MAX_BODY_BYTES)
    return int(value)


# --------------------------------------------------------------------------- body size


def _describe(limit: int) -> str:
    if limit % MIB == 0:
        return f"{limit // MIB} MiB"
    if limit % 1024 == 0:
        return f"{limit // 1024} KiB"
    return f"{limit} bytes"


def too_large_problem(limit: int) -> Problem:
    return Problem(
        413,
        "payload_too_large",
        "The request body is too large",
        f"the body may be at most {limit} bytes ({_describe(limit)})",
        max_bytes=limit,
    )


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the limit. An HTTPException, so that
    FastAPI's body parsing lets it through as a 413 rather than a 400; the middleware then
    drops whatever the app answered and sends its own 413, so every 413 reads the same."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than {limit} bytes")
        self.limit = limit


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            if declared <= DRAIN_LIMIT_BYTES:
                await _drain(receive)
            await self._refuse(scope, receive, send)
            return
        if declared is not None:
            # The server frames the body by Content-Length: it cannot grow past it.
            await self.app(scope, receive, send)
            return

        limit = self.max_bytes
        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the app's answer to the cut body; the 413 below replaces it
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception:
            # BodyTooLarge itself, or whatever the app made of it (an ExceptionGroup, ...).
            if not exceeded or started:
                raise
        if exceeded and not started:
            await _drain(receive, DRAIN_LIMIT_BYTES - received)
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        REJECTED.labels("payload_too_large").inc()
        response = problem_response(too_large_problem(self.max_bytes), Request(scope))
        # The rest of the body is not read: the connection cannot carry another request.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


# Read (and drop) an oversized body up to this size before answering 413: a client that sends
# its whole body before reading the answer then sees the 413 instead of a reset connection.
# Bigger bodies are cut off unread.
DRAIN_LIMIT_BYTES = 16 * 1024 * 1024


async def _drain(receive: Receive, budget: int = DRAIN_LIMIT_BYTES) -> None:
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# --------------------------------------------------------------------------- load shedding

# Operators must always reach these, above all when the process is overloaded.
UNSHED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def overloaded_problem(retry_after: int) -> Problem:
    return Problem(
        503,
        "overloaded",
        "The service is at capacity",
        "Too many requests are being served right now; nothing of this request was "
        f"applied. Retry after {retry_after} s (with the same Idempotency-Key).",
        retry_after=retry_after,
    )


class LoadShedder:
    """At most `max_in_flight` requests in the app at once; a request that cannot get a slot
    within `queue_timeout_s` is answered 503 `overloaded` with Retry-After at once.

    Past its capacity a process otherwise queues without bound: every request slows down
    until clients time out, not knowing whether their submission was taken. A fast, explicit
    refusal keeps the accepted ones fast and tells the others exactly what to do.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_in_flight: int = 16,
        queue_timeout_s: float = 0.5,
        retry_after_s: int = 1,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be positive")
        self.app = app
        self.queue_timeout_s = queue_timeout_s
        self.retry_after_s = retry_after_s
        self._slots = asyncio.Semaphore(max_in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNSHED_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=self.queue_timeout_s)
        except TimeoutError:
            REJECTED.labels("overloaded").inc()
            await _drain(receive, MIB)
            response = problem_response(overloaded_problem(self.retry_after_s), Request(scope))
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._slots.release()


# --------------------------------------------------------------------------- rate


class RateLimiter:
    """Token buckets: each key refills at `rate_per_s` up to `burst`; a request costs one."""

    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: int,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate_per_s > 0, burst >= 1 and max_clients >= 1 are required")
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        # key -> [tokens, last refill time]; ordered oldest-seen first.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: LimitSettings) -> RateLimiter:
        return cls(
            rate_per_s=settings.rate_limit_per_s,
            burst=settings.rate_limit_burst,
            max_clients=settings.rate_limit_max_clients,
        )

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def acquire(self, key: str) -> float:
        """Take one token for `key`: 0.0 when allowed, else the seconds until one is there."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [self.burst, now]
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate_per_s)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self.rate_per_s


def client_key(request: Request) -> str:
    """The token subject when the request was authenticated first, else the client address.

    The address is the peer uvicorn reports; behind a proxy run uvicorn with
    `--forwarded-allow-ips` so it takes the address from `X-Forwarded-For` of trusted proxies
    only (the header itself is whatever a client wants it to be)."""
    principal = getattr(request.state, "principal", None)
    subject = getattr(principal, "subject", None)
    if isinstance(subject, str):
        return f"sub:{subject}"
    return f"ip:{request.client.host if request.client else 'unknown'}"


def rate_limited(
    limiter: RateLimiter,
    key_fn: Callable[[Request], str] = client_key,
    *,
    after: Callable[..., Any] | None = None,
) -> Callable[..., Any]:
    """A FastAPI dependency spending one token of the caller's bucket, or answering 429.

    Pass the app's authentication dependency as `after` (the same object the routes use) so
    it runs first and the key is the token subject rather than the address:

        dependencies=[Depends(rate_limited(limiter, after=authenticated))]
    """

    def check(request: Request) -> None:
        wait = limiter.acquire(key_fn(request))
        if wait > 0:
            REJECTED.labels("rate_limited").inc()
            seconds = max(1, math.ceil(wait))
            raise Problem(
                429,
                "rate_limited",
                "Too many requests",
                f"this client is over {limiter.rate_per_s:g} requests per second "
                f"(burst {limiter.burst:g}); retry after {seconds} s",
                retry_after=seconds,
            )

    if after is None:

        async def limited(request: Request) -> None:
            check(request)

        return limited

    async def limited_after(request: Request, _: Any = Depends(after)) -> None:  # noqa: B008
        check(request)

    return limited_after
