"""Health, readiness, metrics and RFC 9457 problems on a service app (real database check)."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.web import Problem, install_health_routes, install_problem_handlers

pytestmark = pytest.mark.integration


class Body(BaseModel):
    item_code: str
    count: int


def build_app(engine: AsyncEngine, kafka_ok: bool = True) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    async def database() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def kafka() -> None:
        if not kafka_ok:
            raise ConnectionError("broker unreachable")

    install_health_routes(app, {"database": database, "kafka": kafka})

    @app.post("/things")
    async def things(body: Body) -> dict[str, str]:
        if body.item_code == "GONE":
            raise Problem(
                422,
                "unknown_item",
                "Unknown item",
                "GONE is not in the catalog",
                errors=[{"field": "item_code", "message": "not in the catalog"}],
            )
        return {"ok": body.item_code}

    @app.get("/echo")
    async def echo(word: str) -> dict[str, str]:
        async with engine.connect() as conn:
            stored = (await conn.execute(text("SELECT CAST(:w AS text)"), {"w": word})).scalar()
        return {"word": str(stored)}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("bug")

    return app


async def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
        base_url="http://t",
    )


async def test_health_readiness_and_metrics(engine: AsyncEngine) -> None:
    async with await client(build_app(engine)) as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        ready = await c.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok", "kafka": "ok"}
        metrics = await c.get("/metrics")
        assert metrics.status_code == 200
        assert "tongban_events_consumed_total" in metrics.text
    async with await client(build_app(engine, kafka_ok=False)) as c:
        not_ready = await c.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["checks"]["kafka"] == "failing: ConnectionError"


async def test_errors_are_problem_json_with_a_stable_code(engine: AsyncEngine) -> None:
    async with await client(build_app(engine)) as c:
        invalid = await c.post("/things", json={"item_code": "X"})
        assert invalid.status_code == 422
        assert invalid.headers["content-type"] == "application/problem+json"
        body = invalid.json()
        assert body["code"] == "invalid_request"
        assert body["errors"][0]["field"] == "count"

        domain = await c.post("/things", json={"item_code": "GONE", "count": 1})
        assert domain.status_code == 422 and domain.json()["code"] == "unknown_item"
        assert domain.json()["errors"] == [{"field": "item_code", "message": "not in the catalog"}]

        missing = await c.get("/nowhere")
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"

        crash = await c.get("/boom")
        assert crash.status_code == 500 and crash.json()["code"] == "internal_error"


async def test_a_value_postgresql_cannot_store_is_a_422_not_a_500(engine: AsyncEngine) -> None:
    async with await client(build_app(engine)) as c:
        assert (await c.get("/echo", params={"word": "好"})).json() == {"word": "好"}
        nul = await c.get("/echo", params={"word": "a\x00b"})
        assert nul.status_code == 422
        assert nul.json()["code"] == "invalid_value"
