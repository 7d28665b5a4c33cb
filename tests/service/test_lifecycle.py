"""Process lifecycle: metrics endpoint, and graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from leaky_tokens.catalog.bootstrap import CatalogSettings
from leaky_tokens.catalog.bootstrap import build as build_catalog
from leaky_tokens.runtime.server import start_server
from tests.support.net import free_port


def _get(url: str) -> str:
    with urllib.request.urlopen(url) as response:
        return str(response.read().decode())


async def test_metrics_count_calls_by_method_and_code(tmp_path: Path) -> None:
    metrics_port = free_port()
    settings = CatalogSettings(port=0, metrics_port=metrics_port)
    catalog = await build_catalog(settings)
    running = await start_server(catalog.spec, settings, catalog.verifier)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        body = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_port}/metrics")
        handled = "leaky_catalog_grpc_server_handled_total"
        assert f'{handled}{{code="OK",method="/grpc.health.v1.Health/Check"}} 1.0' in body
        assert "leaky_catalog_grpc_server_handling_seconds_bucket" in body
    finally:
        await running.stop(0)
    # Stopping frees the metrics port: a second server can serve /metrics there.
    again = await start_server(catalog.spec, settings, catalog.verifier)
    await again.stop(0)


def test_sigterm_drains_and_exits_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "LEAKY_DATA_DIR": str(tmp_path),
        "LEAKY_AUTH_PORT": str(port),
        "LEAKY_AUTH_METRICS_PORT": "0",
        "LEAKY_AUTH_ARGON2_MEMORY_KIB": "1024",
        "LEAKY_AUTH_ARGON2_TIME_COST": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "leaky_tokens.auth"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 30
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "auth did not become healthy"
                time.sleep(0.1)
        channel.close()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert '"msg": "shutting down"' in stderr
    assert (tmp_path / "auth.db").exists()


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace endpoint that keeps the span names it receives."""

    def __init__(self) -> None:
        self.spans: list[str] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(span.name for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_traces_are_exported_over_otlp_only_when_configured() -> None:
    collector = _Collector()
    otlp = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, otlp)  # type: ignore[no-untyped-call]
    otlp_port = otlp.add_insecure_port("127.0.0.1:0")
    await otlp.start()
    settings = CatalogSettings(port=0, otlp_endpoint=f"127.0.0.1:{otlp_port}")
    catalog = await build_catalog(settings)
    running = await start_server(catalog.spec, settings, catalog.verifier)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for _ in stub.ServerReflectionInfo(iter([request])):
                break
    finally:
        await running.stop(0)  # flushes the batch processor
        await otlp.stop(0)
    assert "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" in collector.spans
    unconfigured = await start_server(catalog.spec, CatalogSettings(port=0), None)
    assert unconfigured.tracing.interceptors == []
    await unconfigured.stop(0)
