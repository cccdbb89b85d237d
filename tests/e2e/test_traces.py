"""One trace per case: the `traceparent` of the intake request is carried through every event
to the closing one, each hop a new span of the same trace (W3C Trace Context)."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest

from services.cli.applicants import application_for
from services.common.settings import CommonSettings
from tests.e2e.conftest import APPROVED_CASE_EVENTS, INTAKE, items_where, wait_status
from tests.kafka_helpers import header, read_topic

pytestmark = pytest.mark.e2e

TOPICS = ("case.intake.v1", "case.routing.v1", "case.approval.v1", "case.delivery.v1")


async def test_the_request_trace_reaches_the_closing_event(
    catalog: dict[str, Any],
    http: httpx.AsyncClient,
    rng: random.Random,
    settings: CommonSettings,
) -> None:
    trace_id = f"{rng.getrandbits(128):032x}"
    request_span = f"{rng.getrandbits(64):016x}"
    instant = items_where(catalog, lambda i: bool(i.get("instant")))
    answer = await http.post(
        f"{INTAKE}/v1/cases",
        json=application_for(catalog, rng.choice(instant), rng, delivery="electronic"),
        headers={"traceparent": f"00-{trace_id}-{request_span}-01"},
    )
    assert answer.status_code == 201, answer.text
    case_id = answer.json()["case_id"]
    await wait_status(http, case_id, "closed")

    events: dict[str, str] = {}
    for topic in TOPICS:
        for record in await read_topic(settings, topic, idle=0.3):
            if header(record, "ce_subject") == case_id:
                events[str(header(record, "ce_type"))] = str(header(record, "traceparent"))
    expected = set(APPROVED_CASE_EVENTS)
    assert expected <= set(events), events
    trace_ids = {events[t].split("-")[1] for t in expected}
    assert trace_ids == {trace_id}, events
    # Each hop is a span of its own: the services' spans, never the caller's span again.
    span_ids = {events[t].split("-")[2] for t in expected}
    assert request_span not in span_ids
    assert events["gov.case.submitted.v1"] != events["gov.case.routed.v1"]
