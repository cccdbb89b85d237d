"""Every service process exports its HTTP requests on `/metrics`: a count and a latency
histogram by route template, method and status, never the raw path."""

from __future__ import annotations

from typing import Any

import pytest

from services.cli.devclient import ActingClient
from services.common.auth import Role
from services.common.http_metrics import UNMATCHED_ROUTE
from tests.conftest import unique
from tests.e2e.conftest import APPROVAL, DELIVERY, INTAKE, ROUTING
from tests.integration.test_web import http_samples

pytestmark = pytest.mark.e2e

COUNT = "tongban_http_requests_total"
SECONDS = "tongban_http_request_duration_seconds"


async def scrape(http: ActingClient, base: str, service: str) -> dict[Any, float]:
    answer = await http.get(f"{base}/metrics")
    assert answer.status_code == 200
    return http_samples(answer.text, service)


async def test_each_service_counts_and_times_requests_by_route_template(
    catalog: dict[str, Any], http: ActingClient
) -> None:
    before = await scrape(http, INTAKE, "intake")
    case_id = unique("NO-SUCH-CASE")
    operator = http.headers_for(Role.operator)
    assert (await http.get(f"{INTAKE}/v1/items", headers=operator)).status_code == 200
    assert (await http.get(f"{INTAKE}/v1/cases/{case_id}", headers=operator)).status_code == 404
    refused = await http.post(
        f"{INTAKE}/v1/cases",
        json={"item_code": 7},
        headers={**http.headers_for(Role.clerk, "online"), "Idempotency-Key": unique("k")},
    )
    assert refused.status_code == 422
    assert (await http.get(f"{INTAKE}/no/such/{case_id}")).status_code == 404
    after = await scrape(http, INTAKE, "intake")
    text = (await http.get(f"{INTAKE}/metrics")).text
    assert case_id not in text

    def grew(name: str, method: str, route: str, status: str) -> float:
        key = (name, method, route, status)
        return after.get(key, 0) - before.get(key, 0)

    for method, route, status in (
        ("GET", "/v1/items", "200"),
        ("GET", "/v1/cases/{case_id}", "404"),
        ("POST", "/v1/cases", "422"),
        ("GET", UNMATCHED_ROUTE, "404"),
    ):
        assert grew(COUNT, method, route, status) == 1, (method, route, status)
        assert grew(f"{SECONDS}_count", method, route, status) == 1
        assert grew(f"{SECONDS}_bucket:+Inf", method, route, status) == 1
        assert grew(f"{SECONDS}_sum", method, route, status) > 0

    # The three others too (readiness probes are requests like any other).
    for base, service in ((ROUTING, "routing"), (APPROVAL, "approval"), (DELIVERY, "delivery")):
        assert (await http.get(f"{base}/readyz")).status_code == 200
        samples = await scrape(http, base, service)
        assert samples[(COUNT, "GET", "/readyz", "200")] >= 1
        assert samples[(f"{SECONDS}_bucket:10.0", "GET", "/readyz", "200")] >= 1
