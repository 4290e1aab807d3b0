"""Tracing: one trace per request across every service it crosses, through
OpenTelemetry's gRPC interceptors. With `[telemetry] spans_dir` set, each process writes
its spans as JSON lines to `{spans_dir}/{service}.spans.jsonl`; unset, tracing is off
and costs nothing."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .config import TelemetryConfig

_provider: TracerProvider | None = None
_PROPAGATOR = TraceContextTextMapPropagator()


def _line(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None  # a recorded span always has one
    return (
        json.dumps(
            {
                "trace_id": f"{context.trace_id:032x}",
                "span_id": f"{context.span_id:016x}",
                "parent_id": f"{span.parent.span_id:016x}" if span.parent else "",
                "name": span.name,
                "service": span.resource.attributes.get("service.name", ""),
                "start": span.start_time,
                "end": span.end_time,
                "status": span.status.status_code.name,
            }
        )
        + "\n"
    )


def configure(service: str, config: TelemetryConfig) -> None:
    global _provider
    if not config.spans_dir or _provider is not None:
        return
    Path(config.spans_dir).mkdir(parents=True, exist_ok=True)
    out = open(Path(config.spans_dir) / f"{service}.spans.jsonl", "a", buffering=1)  # noqa: SIM115
    _provider = TracerProvider(resource=Resource.create({"service.name": service}))
    _provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=out, formatter=_line)))
    trace.set_tracer_provider(_provider)


def server_interceptors() -> list[Any]:
    return [aio_server_interceptor(tracer_provider=_provider)] if _provider else []


def client_interceptors() -> list[Any]:
    return list(aio_client_interceptors(tracer_provider=_provider)) if _provider else []


def traceparent() -> str:
    """The current span as a W3C `traceparent`, for a record to carry to the service
    that acts on it later ('' when tracing is off)."""
    if _provider is None:
        return ""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", "")


@contextlib.contextmanager
def continued(parent: str, name: str) -> Iterator[None]:
    """A span for work that a watch or a queue started, in the trace of the request whose
    `traceparent` the record kept: work driven by watches has no caller to inherit from."""
    if _provider is None:
        yield
        return
    context = _PROPAGATOR.extract({"traceparent": parent}) if parent else None
    with _provider.get_tracer("sharemesh").start_as_current_span(name, context=context):
        yield


def shutdown() -> None:
    """Flushes spans still buffered (called on an orderly stop)."""
    if _provider is not None:
        _provider.shutdown()
