"""Load shedding and failure answers: past capacity a request gets 503 + Retry-After at once
(never a timeout); a database that does not answer is a 503, not a 500; the ambiguous-commit
injector raises only after a commit, at the rate asked."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import exc as sa_exc

from services.common.failures import (
    AmbiguousCommitError,
    AmbiguousCommits,
    is_infrastructure_error,
)
from services.common.limits import LoadShedder
from services.common.settings import CommonSettings
from services.common.web import PROBLEM_JSON, install_problem_handlers

pytestmark = pytest.mark.unit


def slow_app(release: asyncio.Event, entered: list[int], *, slots: int, wait_s: float) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    app.add_middleware(LoadShedder, max_in_flight=slots, queue_timeout_s=wait_s)

    @app.post("/v1/cases")
    async def submit() -> dict[str, str]:
        entered.append(1)
        await release.wait()
        return {"status": "ok"}

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


async def test_requests_past_capacity_get_503_with_retry_after_at_once() -> None:
    release, entered = asyncio.Event(), list[int]()
    app = slow_app(release, entered, slots=2, wait_s=0.05)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        held = [asyncio.create_task(c.post("/v1/cases", json={})) for _ in range(2)]
        while len(entered) < 2:
            await asyncio.sleep(0.01)
        refused = await c.post("/v1/cases", json={"n": 3})
        ready = await c.get("/readyz")  # operators still get through
        release.set()
        answers = await asyncio.gather(*held)
    assert refused.status_code == 503
    assert refused.headers["content-type"] == PROBLEM_JSON
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["code"] == "overloaded"
    assert ready.status_code == 200
    assert [a.status_code for a in answers] == [200, 200]
    assert len(entered) == 2  # the refused request never reached the app


async def test_a_request_that_gets_a_slot_within_the_wait_is_served() -> None:
    release, entered = asyncio.Event(), list[int]()
    app = slow_app(release, entered, slots=1, wait_s=5.0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        first = asyncio.create_task(c.post("/v1/cases", json={}))
        while not entered:
            await asyncio.sleep(0.01)
        second = asyncio.create_task(c.post("/v1/cases", json={}))
        await asyncio.sleep(0.05)
        release.set()
        answers = await asyncio.gather(first, second)
    assert [a.status_code for a in answers] == [200, 200]
    assert len(entered) == 2


async def test_database_timeouts_answer_503_with_retry_after() -> None:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/pool")
    async def pool() -> None:
        raise sa_exc.TimeoutError("QueuePool limit of size 10 overflow 10 reached")

    @app.get("/commit")
    async def commit() -> None:
        raise AmbiguousCommitError("answer lost")

    @app.get("/bug")
    async def bug() -> None:
        raise KeyError("x")

    # Infrastructure failures are answered without re-raising out of the app: a re-raise is
    # what makes uvicorn close the connection after the answer, and a client that already
    # sent its next request on it gets a reset. The default transport raises what the app
    # re-raises, so these two calls fail if the handling moves back to the outermost layer.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        pool_answer, commit_answer = await c.get("/pool"), await c.get("/commit")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        bug_answer = await c.get("/bug")
    for answer in (pool_answer, commit_answer):
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.json()["code"] == "service_unavailable"
        assert "Idempotency-Key" in answer.json()["detail"]
    assert bug_answer.status_code == 500


def test_failures_are_classified() -> None:
    assert is_infrastructure_error(AmbiguousCommitError("x"))
    assert is_infrastructure_error(ConnectionResetError())
    assert is_infrastructure_error(sa_exc.TimeoutError("pool"))
    # A terminated backend's FATAL still being read when the next statement is sent.
    assert is_infrastructure_error(
        asyncpg.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        )
    )
    assert not is_infrastructure_error(asyncpg.DataError("invalid input for query argument"))
    assert not is_infrastructure_error(ValueError("bad payload"))
    wrapped = RuntimeError("handler")
    wrapped.__cause__ = TimeoutError()
    assert is_infrastructure_error(wrapped)


def test_the_injector_raises_at_about_its_rate_and_never_at_zero() -> None:
    injector = AmbiguousCommits(0.1, random.Random(7))
    raised = 0
    for _ in range(5000):
        try:
            injector.maybe_raise()
        except AmbiguousCommitError:
            raised += 1
    assert raised == injector.injected
    assert 350 < raised < 650
    silent = AmbiguousCommits(0.0)
    for _ in range(1000):
        silent.maybe_raise()
    assert silent.injected == 0


def test_fault_injection_is_refused_in_production() -> None:
    with pytest.raises(ValueError, match="FAULT_AMBIGUOUS_COMMIT_RATE"):
        CommonSettings(environment="production", fault_ambiguous_commit_rate=0.01)
    assert CommonSettings(environment="test", fault_ambiguous_commit_rate=0.01)
