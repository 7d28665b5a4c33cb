"""OpenTelemetry tracing through opentelemetry-instrumentation-grpc: on only when configured."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Tracing:
    """Server interceptors to install, and how to flush spans at shutdown."""

    interceptors: list[Any] = field(default_factory=list)
    shutdown: Callable[[], None] = lambda: None


def tracing(slug: str, otlp_endpoint: str) -> Tracing:
    """OTLP/gRPC span export to `otlp_endpoint`; nothing at all when it is empty."""
    if not otlp_endpoint:
        return Tracing()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": f"leaky-{slug}"}))
    exporter = OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    interceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=provider, filter_=filters.negate(filters.health_check())
    )
    return Tracing([interceptor], provider.shutdown)
