"""OpenTelemetry tracing through opentelemetry-instrumentation-grpc: on only when configured."""

from __future__ import annotations

from typing import Any


def server_interceptors(slug: str, otlp_endpoint: str) -> list[Any]:
    """The OTel server interceptor exporting to `otlp_endpoint`, or nothing when it is empty."""
    if not otlp_endpoint:
        return []
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": f"leaky-{slug}"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    return [
        aio_server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=provider, filter_=filters.negate(filters.health_check())
        )
    ]
