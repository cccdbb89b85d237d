"""With TONGBAN_OTLP_ENDPOINT set, spans reach an OTLP/HTTP collector (a real HTTP server here,
decoding the protobuf the collector would)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import SpanKind

from services.common import tracing
from services.common.tracing import TracingSettings, continued_span, make_provider

pytestmark = pytest.mark.integration

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Collector(BaseHTTPRequestHandler):
    received: list[ExportTraceServiceRequest] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        Collector.received.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        return


@pytest.fixture
def collector() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()


def test_spans_are_exported_over_otlp_http(collector: str) -> None:
    settings = TracingSettings(service="routing", otlp_endpoint=collector)
    provider = make_provider(settings)
    tracing.use_provider(provider)
    try:
        with continued_span("apply gov.case.submitted.v1", PARENT, kind=SpanKind.CONSUMER):
            pass
    finally:
        tracing.use_provider(None)
        provider.shutdown()  # flushes the batch
    spans = [
        (resource.resource, span)
        for request in Collector.received
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert len(spans) == 1
    resource, span = spans[0]
    assert span.name == "apply gov.case.submitted.v1"
    assert span.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span.parent_span_id.hex() == "00f067aa0ba902b7"
    service_names = [a.value.string_value for a in resource.attributes if a.key == "service.name"]
    assert service_names == ["tongban-routing"]
