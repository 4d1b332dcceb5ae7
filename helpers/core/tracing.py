"""Tracing across services with OpenTelemetry, kept in memory so a notebook can draw it.

A trace is the story of one user request across every service it touched. The trace
context (W3C ``traceparent``) rides in HTTP headers for sync calls and in the message
envelope for async ones; each service continues the same trace, and the spans end up
in an in-memory exporter that :func:`helpers.core.plots.waterfall` draws.

    tracer = get_tracer("gateway")
    with tracer.start_as_current_span("GET /product"):
        headers = inject_headers()          # pass these on the outgoing call
    ...
    with tracer.start_as_current_span("handle", context=extract_headers(request.headers)):
        ...
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

MAX_SPANS = 20_000
"""Keep the newest spans only: a long session of load tests must not grow memory without end."""

_exporter = InMemorySpanExporter(max_spans=MAX_SPANS)
_provider: TracerProvider | None = None


def _ensure_provider() -> TracerProvider:
    """Install one SDK provider per process (OpenTelemetry refuses to replace it)."""
    global _provider
    if _provider is None:
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            _provider = current
        else:
            _provider = TracerProvider()
            trace.set_tracer_provider(_provider)
        _provider.add_span_processor(SimpleSpanProcessor(_exporter))
    return _provider


def get_tracer(service: str) -> trace.Tracer:
    """A tracer whose spans are labelled with ``service``."""
    return _ensure_provider().get_tracer(service)


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Headers carrying the current trace context, for an outgoing HTTP call."""
    carrier: dict[str, str] = dict(headers or {})
    inject(carrier)
    return carrier


def extract_headers(headers: Mapping[str, str]) -> otel_context.Context:
    """The caller's trace context from incoming HTTP headers (start child spans in it)."""
    return extract(dict(headers))


def current_traceparent() -> str | None:
    """The current context as a ``traceparent`` string, for a message envelope."""
    return inject_headers().get("traceparent")


def context_from_traceparent(traceparent: str | None) -> otel_context.Context:
    """The context a message's ``traceparent`` carries (empty context when None)."""
    return extract({"traceparent": traceparent} if traceparent else {})


SpanKind = Literal["internal", "server", "client", "producer", "consumer"]
"""OpenTelemetry's span kinds, as a row names them."""

_KINDS: dict[trace.SpanKind, SpanKind] = {
    trace.SpanKind.INTERNAL: "internal",
    trace.SpanKind.SERVER: "server",
    trace.SpanKind.CLIENT: "client",
    trace.SpanKind.PRODUCER: "producer",
    trace.SpanKind.CONSUMER: "consumer",
}


@dataclass(frozen=True)
class SpanRow:
    """A finished span flattened for plotting: who, what, when (ms from trace start)."""

    service: str
    name: str
    start_ms: float
    end_ms: float
    depth: int
    trace_id: str
    span_id: str
    parent_id: str | None
    kind: SpanKind = "internal"
    """OpenTelemetry's span kind in lower case: "client" and "server" tell the two ends of one call apart."""

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms


def finished_spans(trace_id: int | None = None) -> list[ReadableSpan]:
    """Spans finished so far (optionally for one trace)."""
    spans = list(_exporter.get_finished_spans())
    if trace_id is not None:
        spans = [s for s in spans if s.context.trace_id == trace_id]
    return spans


def clear() -> None:
    """Forget recorded spans (start of an experiment)."""
    _exporter.clear()


def span_rows(spans: list[ReadableSpan]) -> list[SpanRow]:
    """Flatten spans into rows ordered by start, with depth from the parent chain."""
    if not spans:
        return []
    by_id = {s.context.span_id: s for s in spans}
    origin = min(s.start_time or 0 for s in spans)

    def depth(span: ReadableSpan) -> int:
        level, parent = 0, span.parent
        while parent is not None and parent.span_id in by_id:
            level += 1
            parent = by_id[parent.span_id].parent
        return level

    rows = [
        SpanRow(
            service=s.instrumentation_scope.name if s.instrumentation_scope else "?",
            name=s.name,
            start_ms=((s.start_time or 0) - origin) / 1e6,
            end_ms=((s.end_time or 0) - origin) / 1e6,
            depth=depth(s),
            trace_id=f"{s.context.trace_id:032x}",
            span_id=f"{s.context.span_id:016x}",
            parent_id=f"{s.parent.span_id:016x}" if s.parent else None,
            kind=_KINDS[s.kind],
        )
        for s in spans
    ]
    return sorted(rows, key=lambda r: (r.start_ms, r.depth))


def trace_id_of(span: Any) -> int:
    """The numeric trace id of a live or finished span."""
    return span.get_span_context().trace_id if hasattr(span, "get_span_context") else span.context.trace_id
