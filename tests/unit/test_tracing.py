"""Traces: a request or an event continues its caller's trace, and what it emits is a child."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.common import tracing
from services.common.tracing import (
    TraceRequests,
    TracingSettings,
    continued_span,
    current_traceparent,
    make_provider,
)
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = make_provider(TracingSettings(service="test"))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_provider(None)


def test_an_event_continues_its_trace_and_emits_as_a_child(spans: InMemorySpanExporter) -> None:
    with continued_span("apply gov.case.submitted.v1", PARENT, kind=SpanKind.CONSUMER):
        emitted = current_traceparent()
    assert emitted is not None
    version, trace_id, span_id, flags = emitted.split("-")
    assert trace_id == TRACE_ID
    assert span_id != PARENT.split("-")[2]  # a new span: the consumer's
    (span,) = spans.get_finished_spans()
    assert span.name == "apply gov.case.submitted.v1"
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert f"{span.context.span_id:016x}" == span_id
    assert current_traceparent() is None  # nothing leaks out of the block


def test_without_a_parent_a_new_trace_starts(spans: InMemorySpanExporter) -> None:
    with continued_span("POST /v1/cases", None, kind=SpanKind.SERVER):
        started = current_traceparent()
    assert started is not None and started.split("-")[1] != TRACE_ID


def test_with_tracing_off_the_incoming_traceparent_passes_through() -> None:
    tracing.use_provider(None)
    with continued_span("apply x", PARENT, kind=SpanKind.CONSUMER):
        assert current_traceparent() == PARENT
    with continued_span("apply y", None, kind=SpanKind.CONSUMER):
        assert current_traceparent() is None


async def test_http_requests_get_a_server_span_continuing_the_caller(
    spans: InMemorySpanExporter,
) -> None:
    app = FastAPI()
    app.add_middleware(TraceRequests)
    seen: list[str | None] = []

    @app.post("/v1/cases")
    async def submit() -> dict[str, str]:
        seen.append(current_traceparent())
        return {}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        seen.append(current_traceparent())
        return {}

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        await client.post("/v1/cases", headers={"traceparent": PARENT})
        await client.post("/v1/cases")
        await client.get("/healthz")
    continued, fresh, untraced = seen
    assert continued is not None and continued.split("-")[1] == TRACE_ID
    assert fresh is not None and fresh.split("-")[1] != TRACE_ID
    assert untraced is None  # probes make no spans
    names = sorted(s.name for s in spans.get_finished_spans())
    assert names == ["POST /v1/cases", "POST /v1/cases"]
    assert all(
        s.attributes and s.attributes["http.response.status_code"] == 200
        for s in spans.get_finished_spans()
    )


# Run in a child process: a process sets its global tracer provider once, as every service
# process does at start-up (configure_tracing).
_SERVICE_APP_SPANS = """
import asyncio, json
import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from services.common.service import ServiceRuntime, ServiceSettings
from services.common.tracing import configure_tracing

async def main():
    settings = ServiceSettings(service="intake")
    exporter = InMemorySpanExporter()
    provider = configure_tracing(settings, exporter)
    app = ServiceRuntime(settings).create_app(title="t", description="d")

    @app.get("/v1/ping")
    async def ping():
        return {}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/v1/ping")).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
    provider.force_flush()
    print(json.dumps(sorted([s.name, s.kind.name] for s in exporter.get_finished_spans())))

asyncio.run(main())
"""


def test_a_service_request_makes_one_server_span_and_a_probe_none() -> None:
    """FastAPI's own telemetry stays off: with it, each request made two server spans and
    three internal ones, and health probes were traced."""
    done = subprocess.run(
        [sys.executable, "-c", _SERVICE_APP_SPANS],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [["GET /v1/ping", "SERVER"]]


def test_spans_with_nowhere_to_go_record_nothing_and_the_ids_still_flow() -> None:
    provider = make_provider(TracingSettings(service="test"), record=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        with continued_span("apply gov.case.submitted.v1", PARENT, kind=SpanKind.CONSUMER) as span:
            emitted = current_traceparent()
            assert not span.is_recording()
    finally:
        tracing.use_provider(None)
    assert emitted is not None
    _version, trace_id, span_id, _flags = emitted.split("-")
    assert trace_id == TRACE_ID and span_id != PARENT.split("-")[2]  # a hop of its own
    assert exporter.get_finished_spans() == ()
