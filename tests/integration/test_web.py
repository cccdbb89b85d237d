"""Health, readiness, metrics and RFC 9457 problems on a service app (real database check)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.http_metrics import UNMATCHED_ROUTE
from services.common.web import (
    Problem,
    install_health_routes,
    install_http_metrics,
    install_problem_handlers,
)
from tests.conftest import unique

pytestmark = pytest.mark.integration


class Body(BaseModel):
    item_code: str
    count: int


def build_app(
    engine: AsyncEngine, kafka_ok: bool = True, *, metrics_as: str | None = None
) -> FastAPI:
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

    @app.get("/things/{thing_id}")
    async def thing(thing_id: int) -> dict[str, int]:
        if thing_id == 404:
            raise Problem(404, "not_found", "No such thing")
        return {"thing": thing_id}

    if metrics_as is not None:
        app.mount("/files", StaticFiles(directory=Path(__file__).parent), name="files")
        install_http_metrics(app, service=metrics_as)
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


def http_samples(text: str, service: str) -> dict[tuple[str, str, str, str], float]:
    """(metric sample name, method, route, status) -> value, for one service's HTTP metrics;
    histogram buckets as name `..._bucket:<le>`."""
    out: dict[tuple[str, str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("tongban_http_request"):
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("service") != service:
                continue
            name = sample.name + (f":{labels['le']}" if "le" in labels else "")
            out[(name, labels["method"], labels["route"], labels["status"])] = sample.value
    return out


async def test_http_requests_are_counted_and_timed_by_route_template(engine: AsyncEngine) -> None:
    service = unique("webmetrics")
    secret = "110101199003077777"  # an ID number typed into a path: never a label
    async with await client(build_app(engine, metrics_as=service)) as c:
        assert (await c.get("/things/7")).status_code == 200
        assert (await c.get("/things/8")).status_code == 200
        assert (await c.get("/things/404")).status_code == 404
        assert (await c.get("/things/seven")).status_code == 422
        assert (await c.post("/things/7")).status_code == 405
        assert (await c.get(f"/nowhere/{secret}")).status_code == 404
        redirect = await c.get(f"/things/{secret}/", follow_redirects=False)
        assert redirect.status_code == 307  # to /things/{secret}: the router, not a route
        assert (await c.get("/boom")).status_code == 500
        assert (await c.request("BREW", "/things/7")).status_code == 405
        assert (await c.get("/files/__init__.py")).status_code == 200
        assert (await c.get(f"/files/{secret}.txt")).status_code == 404
        text = (await c.get("/metrics")).text
    assert secret not in text
    got = http_samples(text, service)
    count = "tongban_http_requests_total"
    assert {k: v for k, v in got.items() if k[0] == count} == {
        (count, "GET", "/things/{thing_id}", "200"): 2,
        (count, "GET", "/things/{thing_id}", "404"): 1,
        (count, "GET", "/things/{thing_id}", "422"): 1,
        (count, "POST", "/things/{thing_id}", "405"): 1,
        (count, "OTHER", "/things/{thing_id}", "405"): 1,
        (count, "GET", UNMATCHED_ROUTE, "404"): 1,
        (count, "GET", UNMATCHED_ROUTE, "307"): 1,
        (count, "GET", "/boom", "500"): 1,
        (count, "GET", "/files/{path}", "200"): 1,
        (count, "GET", "/files/{path}", "404"): 1,
    }
    seconds = "tongban_http_request_duration_seconds"
    ok = ("GET", "/things/{thing_id}", "200")
    assert got[(f"{seconds}_count", *ok)] == 2
    assert got[(f"{seconds}_bucket:+Inf", *ok)] == 2
    assert got[(f"{seconds}_bucket:10.0", *ok)] == 2
    assert got[(f"{seconds}_sum", *ok)] > 0
    assert got[(f"{seconds}_count", "GET", "/things/{thing_id}", "422")] == 1
