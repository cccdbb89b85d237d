"""Edge limits: 413 over 1 MiB (declared or streamed), 429 with Retry-After per client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel

from services.common import auth
from services.common.auth import (
    AuthSettings,
    Principal,
    authenticated,
    decode_token,
    mint_token,
)
from services.common.limits import MIB, BodySizeLimit, RateLimiter, max_body_bytes, rate_limited
from services.common.service import ServiceRuntime, ServiceSettings
from services.common.settings import CommonSettings
from services.common.web import PROBLEM_JSON, install_problem_handlers

pytestmark = pytest.mark.unit


class Note(BaseModel):
    text: str


def body_app(calls: list[int], *, limit: int = MIB) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=limit)

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, int]:
        calls.append(1)
        return {"length": len(await request.body())}

    @app.post("/note")
    async def note(body: Note) -> dict[str, int]:
        calls.append(1)
        return {"length": len(body.text)}

    return app


def client_for(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://svc")


async def chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"x" * n


def assert_413(answer: httpx.Response) -> None:
    assert answer.status_code == 413
    assert answer.headers["content-type"] == PROBLEM_JSON
    body = answer.json()
    assert body["code"] == "payload_too_large"
    assert body["max_bytes"] == MIB
    assert "1 MiB" in body["detail"]


async def test_declared_length_over_the_limit_is_413_before_the_app_runs() -> None:
    calls: list[int] = []
    async with client_for(body_app(calls)) as client:
        answer = await client.post("/raw", content=b"x" * (MIB + 1))
    assert_413(answer)
    assert answer.headers["connection"] == "close"
    assert calls == []


async def test_streamed_body_over_the_limit_is_413() -> None:
    calls: list[int] = []
    async with client_for(body_app(calls)) as client:
        answer = await client.post("/raw", content=chunks(MIB + 1))
        assert "content-length" not in answer.request.headers
        assert_413(answer)
        # FastAPI parses the body itself here: still our 413, not its 400.
        note = await client.post(
            "/note", content=chunks(MIB + 1), headers={"content-type": "application/json"}
        )
        assert_413(note)


@pytest.mark.parametrize("streamed", [False, True])
async def test_exactly_the_limit_passes(streamed: bool) -> None:
    calls: list[int] = []
    async with client_for(body_app(calls)) as client:
        content = chunks(MIB) if streamed else b"x" * MIB
        answer = await client.post("/raw", content=content)
    assert answer.status_code == 200
    assert answer.json() == {"length": MIB}


async def test_small_json_bodies_are_untouched() -> None:
    calls: list[int] = []
    async with client_for(body_app(calls)) as client:
        answer = await client.post("/note", json={"text": "hello"})
    assert answer.status_code == 200
    assert answer.json() == {"length": 5}


async def test_every_service_app_has_the_limit() -> None:
    assert max_body_bytes(CommonSettings()) == MIB
    runtime = ServiceRuntime(ServiceSettings(service="limits_test"))
    app = runtime.create_app(title="t", description="d")

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, int]:
        return {"length": len(await request.body())}

    async with client_for(app) as client:
        assert_413(await client.post("/raw", content=b"x" * (MIB + 1)))
        assert_413(await client.post("/raw", content=chunks(MIB + 1)))
        assert (await client.post("/raw", content=b"x" * MIB)).json() == {"length": MIB}
    await runtime.engine.dispose()


# --------------------------------------------------------------------------- rate


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_wait_then_refill() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)
    assert limiter.acquire("b") == 0.0  # another client has its own bucket
    clock.now += 0.25
    assert limiter.acquire("a") == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.acquire("a") == 0.0
    clock.now += 3600  # refill stops at the burst
    assert [limiter.acquire("a") for _ in range(4)][-1] > 0


def test_buckets_are_bounded_least_recently_seen_first() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=1, max_clients=2, clock=FakeClock())
    limiter.acquire("a")
    limiter.acquire("b")
    limiter.acquire("a")  # a is now the most recent
    limiter.acquire("c")
    assert len(limiter) == 2
    assert "a" in limiter and "c" in limiter and "b" not in limiter
    for i in range(1000):
        limiter.acquire(f"k{i}")
    assert len(limiter) == 2


def test_invalid_limiter_settings() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate_per_s=0, burst=1)


SETTINGS = AuthSettings(environment="test")


def rate_app(limiter: RateLimiter) -> FastAPI:
    app = FastAPI()
    app.state.auth_settings = SETTINGS
    install_problem_handlers(app)

    @app.get("/open", dependencies=[Depends(rate_limited(limiter))])
    async def open_route() -> dict[str, str]:
        return {"ok": "yes"}

    # Route dependencies run before the parameters': `after` puts authentication first.
    @app.get("/mine", dependencies=[Depends(rate_limited(limiter, after=authenticated))])
    async def mine(principal: Annotated[Principal, Depends(authenticated)]) -> dict[str, str]:
        return {"subject": principal.subject}

    return app


async def test_over_the_rate_is_429_with_retry_after() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=0.25, burst=2, clock=clock)
    async with client_for(rate_app(limiter)) as client:
        assert [(await client.get("/open")).status_code for _ in range(2)] == [200, 200]
        answer = await client.get("/open")
        assert answer.status_code == 429
        assert answer.headers["content-type"] == PROBLEM_JSON
        assert answer.headers["retry-after"] == "4"
        assert answer.json()["code"] == "rate_limited"
        assert answer.json()["retry_after"] == 4
        clock.now += 4
        assert (await client.get("/open")).status_code == 200
    assert "ip:127.0.0.1" in limiter


async def test_authenticated_clients_are_limited_by_subject(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=1, clock=FakeClock())
    decoded: list[str] = []

    def counting_decode(token: str, settings: AuthSettings) -> Principal:
        decoded.append(token)
        return decode_token(token, settings)

    monkeypatch.setattr(auth, "decode_token", counting_decode)

    def headers(subject: str) -> dict[str, str]:
        token = mint_token(SETTINGS, subject=subject, role="clerk", scope="HC01-DC")
        return {"Authorization": f"Bearer {token}"}

    async with client_for(rate_app(limiter)) as client:
        first = await client.get("/mine", headers=headers("alice"))
        assert first.json() == {"subject": "alice"}
        # Same address, another subject: its own bucket.
        assert (await client.get("/mine", headers=headers("bob"))).status_code == 200
        assert (await client.get("/mine", headers=headers("alice"))).status_code == 429
        # No token: 401 before any bucket is spent.
        assert (await client.get("/mine")).status_code == 401
    assert {"sub:alice", "sub:bob"} == set(limiter._buckets)
    assert len(decoded) == 3  # once per request with a token, though two dependencies use it
