"""Distributed traces: W3C `traceparent` from the intake request through every event to the
closing one, with OpenTelemetry spans in each service.

- An HTTP request continues the caller's trace (its `traceparent` header) or starts one; a
  server span is current while the handler runs.
- A consumed event continues the trace of its `traceparent` header; a consumer span is current
  while its handler applies it.
- Every event emitted (`ServiceRuntime.emit`) carries the current span's `traceparent`, so the
  next hop's span is a child of this one, and the whole case is one trace.
- Spans go to an OTLP/HTTP collector when `TONGBAN_OTLP_ENDPOINT` is set (e.g.
  `http://otel-collector:4318/v1/traces`); otherwise they are not recorded at all, and only
  their ids flow (a recorded span that goes nowhere cost a third of the runtime's CPU per
  event: issue 18). `TONGBAN_TRACING_ENABLED=false` turns spans off:
  an incoming `traceparent` is then passed through unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.settings import CommonSettings

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACER_NAME = "tongban"


class TracingSettings(CommonSettings):
    tracing_enabled: bool = True
    # OTLP over HTTP/protobuf, the traces URL of a collector; unset: spans are not exported.
    otlp_endpoint: str | None = None
    tracing_sample_ratio: float = Field(1.0, ge=0, le=1)


def make_provider(
    settings: TracingSettings, exporter: SpanExporter | None = None, *, record: bool = True
) -> TracerProvider:
    """A tracer provider for this service; `exporter` overrides the OTLP one (tests).

    `record=False`: spans keep the trace's ids flowing (each hop a span id of its own, the
    request's trace id to the closing event) but record nothing, which is most of a span's
    cost: for a service whose spans have nowhere to go."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"tongban-{settings.service}"}),
        sampler=ParentBased(TraceIdRatioBased(settings.tracing_sample_ratio))
        if record
        else ALWAYS_OFF,
    )
    if exporter is None and settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def configure_tracing(
    settings: TracingSettings, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """Install the process-wide provider (once, at start-up); None when tracing is off.
    Spans are recorded only when they are exported (an OTLP endpoint, or `exporter`)."""
    if not settings.tracing_enabled:
        return None
    exported = exporter is not None or bool(settings.otlp_endpoint)
    provider = make_provider(settings, exporter, record=exported)
    use_provider(provider)
    trace.set_tracer_provider(provider)  # for libraries that trace through the global one
    return provider


_NO_TRACER = trace.NoOpTracer()
_tracer_of_provider: trace.Tracer = _NO_TRACER  # this process's, once configured


def use_provider(provider: TracerProvider | None) -> None:
    """Make `provider` the one tongban's spans use (None: no spans, pass-through only)."""
    global _tracer_of_provider
    # Made once: get_tracer builds a new Tracer (and its instrumentation scope) every call,
    # a tenth of the runtime's CPU per event when it was called for every span.
    _tracer_of_provider = provider.get_tracer(_TRACER_NAME) if provider is not None else _NO_TRACER


def _tracer() -> trace.Tracer:
    return _tracer_of_provider


def current_traceparent() -> str | None:
    """The `traceparent` of the current span (or of the passed-through parent), if any."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def continued_span(
    name: str,
    traceparent: str | None,
    *,
    kind: SpanKind,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """A span, current inside the block, continuing `traceparent`'s trace (or a new trace)."""
    parent = _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
    with _tracer().start_as_current_span(
        name,
        context=parent,
        kind=kind,
        attributes=dict(attributes or {}),
        record_exception=True,
        set_status_on_exception=True,
    ) as span:
        if not trace.get_current_span().get_span_context().is_valid and parent is not None:
            # Tracing is off (no SDK provider): keep the caller's trace flowing unchanged.
            with _passthrough(parent):
                yield span
        else:
            yield span


@contextmanager
def _passthrough(parent: Any) -> Iterator[None]:
    from opentelemetry import context

    token = context.attach(parent)
    try:
        yield
    finally:
        context.detach(token)


class TraceRequests:
    """ASGI middleware: a server span per HTTP request, continuing the caller's trace."""

    UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.UNTRACED:
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", ()):
            if name == b"traceparent":
                incoming = value.decode("latin-1")
                break
        method = scope.get("method", "GET")
        # Span names stay low-cardinality: the first two path segments (no case ids).
        route = "/".join(str(scope.get("path", "")).split("/")[:3])
        with continued_span(
            f"{method} {route}",
            incoming,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope.get("path", "")},
        ) as span:

            async def send_with_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            await self.app(scope, receive, send_with_status)
