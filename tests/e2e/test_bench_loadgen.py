"""The bench's compiled load generator against the running intake: every request a real
submission with its own Idempotency-Key and its terminal's token, each answered case there."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from services.bench.e2e import Tokens
from services.bench.loadgen import LoadStep, Request, offer
from services.cli.applicants import application_for
from services.cli.devclient import ActingClient
from tests.e2e.conftest import INTAKE, case_status, items_where

pytestmark = pytest.mark.e2e

CASES = 40
RATE = 20.0


async def test_offered_submissions_become_distinct_cases(
    catalog: dict[str, Any], http: ActingClient, rng: random.Random
) -> None:
    items = items_where(catalog, lambda i: bool(i.get("instant")))
    tokens = Tokens()
    bodies = [
        application_for(catalog, rng.choice(items), rng, delivery="electronic")
        for _ in range(CASES)
    ]
    requests = [Request(tokens.for_body(b), json.dumps(b).encode()) for b in bodies]
    started: list[int] = []

    result = await offer(
        LoadStep(urls=[f"{INTAKE}/v1/cases"], rate=RATE, seconds=CASES / RATE, requests=requests),
        on_start=started.append,
    )

    assert len(started) == 1
    assert result.late == 0
    assert [a.status for a in result.answers] == [201] * CASES, result.answers
    assert len({a.key for a in result.answers}) == CASES
    case_ids = {a.case_id for a in result.answers}
    assert None not in case_ids and len(case_ids) == CASES
    sends = sorted(a.sent_at for a in result.answers)  # on schedule: 1/RATE apart
    assert sends[-1] - sends[0] == pytest.approx((CASES - 1) / RATE, abs=0.01)
    assert all(a.latency_s > 0 for a in result.answers)
    assert 0 < result.cpu_s < result.wall_s
    for answer, body in zip(result.answers, bodies, strict=True):  # answers in offered order
        view = await case_status(http, str(answer.case_id))
        assert view["item_code"] == body["item_code"]
    # The key it was sent with is the case's: offered again under it, the same case answers.
    first, request = result.answers[0], requests[0]
    again = await http.post(
        f"{INTAKE}/v1/cases",
        content=request.body,
        headers={
            "Authorization": f"Bearer {request.token}",
            "Content-Type": "application/json",
            "Idempotency-Key": first.key,
        },
    )
    assert again.status_code in (200, 201), again.text
    assert again.json()["case_id"] == first.case_id
