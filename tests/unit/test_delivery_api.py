"""delivery's REST edge without I/O: routes, and requests refused before any database work."""

from collections.abc import AsyncIterator

import httpx
import pytest

from services.delivery.app import DeliverySettings, create_app
from tests.auth_helpers import auth_headers

pytestmark = pytest.mark.unit


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # ASGITransport does not run the lifespan: no database, no Kafka; these requests never
    # reach them.
    transport = httpx.ASGITransport(app=create_app(DeliverySettings()), raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://delivery", headers=auth_headers("operator")
    ) as client:
        yield client


def test_settings() -> None:
    settings = DeliverySettings()
    assert settings.service == "delivery"
    assert settings.http_port == 8004


async def test_openapi_lists_the_delivery_routes(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {
        "/v1/results/{case_id}",
        "/v1/cases/{case_id}/pickup",
        "/v1/cases/{case_id}/rating",
        "/v1/licenses/{license_id}/verify",
    } <= set(paths)
    assert "201" in paths["/v1/cases/{case_id}/rating"]["post"]["responses"]


async def test_rating_outside_the_scale_is_a_problem(client: httpx.AsyncClient) -> None:
    answer = await client.post("/v1/cases/C1/rating", json={"rating": "great"})
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "invalid_request"
    assert answer.json()["errors"][0]["field"] == "rating"


async def test_pickup_refuses_unknown_fields(client: httpx.AsyncClient) -> None:
    answer = await client.post("/v1/cases/C1/pickup", json={"office": "HC01-DC"})
    assert answer.status_code == 422


async def test_verify_refuses_a_malformed_hash(client: httpx.AsyncClient) -> None:
    answer = await client.get("/v1/licenses/EL-X/verify", params={"sha256": "abc"})
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == "query.sha256"


async def test_openapi_lists_the_rating_statistics(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    stats = spec["paths"]["/v1/ratings/stats"]["get"]
    params = {p["name"]: p for p in stats["parameters"]}
    assert set(params) == {"by", "from", "to"}
    assert params["by"]["schema"]["enum"] == ["department", "office", "level"]
    assert params["by"]["schema"]["default"] == "department"
    row = spec["components"]["schemas"]["RatingStatsRow"]
    assert list(row["properties"]) == [
        "key",
        "total",
        "very_satisfied",
        "satisfied",
        "basic",
        "dissatisfied",
        "very_dissatisfied",
        "satisfaction_rate",
        "bad",
    ]


async def test_statistics_by_an_unknown_grouping_is_a_problem(client: httpx.AsyncClient) -> None:
    answer = await client.get("/v1/ratings/stats", params={"by": "item"})
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "invalid_grouping"
    assert answer.json()["allowed"] == ["department", "office", "level"]


async def test_statistics_period_must_not_end_before_it_starts(client: httpx.AsyncClient) -> None:
    answer = await client.get(
        "/v1/ratings/stats", params={"from": "2026-11-02", "to": "2026-11-01"}
    )
    assert answer.status_code == 422
    assert answer.json()["code"] == "invalid_period"


async def test_statistics_dates_are_dates(client: httpx.AsyncClient) -> None:
    answer = await client.get("/v1/ratings/stats", params={"from": "yesterday"})
    assert answer.status_code == 422
    assert answer.json()["code"] == "invalid_request"
    assert answer.json()["errors"][0]["field"] == "query.from"
