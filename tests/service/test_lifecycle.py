"""Process lifecycle: metrics endpoint, and graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from leaky_tokens.catalog.bootstrap import CatalogSettings
from leaky_tokens.catalog.bootstrap import build as build_catalog
from leaky_tokens.runtime.server import start_server
from tests.support.net import free_port, serving_port
from tests.support.wait import wait_until


def _get(url: str) -> str:
    with urllib.request.urlopen(url) as response:
        return str(response.read().decode())


async def test_metrics_count_calls_by_method_and_code(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # An explicit port: metrics_port 0 means "no metrics" (a documented setting), and the
    # second server below must bind the very port the first one freed.
    caplog.set_level(logging.INFO, logger="leaky_tokens.runtime.server")
    settings = CatalogSettings(port=0, metrics_port=free_port())
    catalog = await build_catalog(settings)
    running = await start_server(catalog.spec, settings, catalog.verifier)
    assert running.metrics_port == settings.metrics_port
    (serving,) = [r for r in caplog.records if r.getMessage() == "serving"]
    assert vars(serving)["address"] == f"127.0.0.1:{running.port}"
    assert vars(serving)["metrics_address"] == f"127.0.0.1:{running.metrics_port}"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        url = f"http://127.0.0.1:{running.metrics_port}/metrics"
        body = await asyncio.to_thread(_get, url)
        handled = "leaky_catalog_grpc_server_handled_total"
        assert f'{handled}{{code="OK",method="/grpc.health.v1.Health/Check"}} 1.0' in body
        assert "leaky_catalog_grpc_server_handling_seconds_bucket" in body
    finally:
        await running.stop(0)
    # Stopping frees the metrics port: a second server can serve /metrics there.
    again = await start_server(catalog.spec, settings, catalog.verifier)
    await again.stop(0)


def test_sigterm_drains_and_exits_cleanly(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "LEAKY_DATA_DIR": str(tmp_path),
        "LEAKY_AUTH_PORT": "0",
        "LEAKY_AUTH_METRICS_PORT": "0",
        "LEAKY_AUTH_ARGON2_MEMORY_KIB": "1024",
        "LEAKY_AUTH_ARGON2_TIME_COST": "1",
    }
    log_path = tmp_path / "auth.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "leaky_tokens.auth"], env=env, stderr=log)
    try:
        port = serving_port(process, log_path)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            wait_until(
                lambda: (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ),
                30,
                what="auth SERVING",
                ignoring=(grpc.RpcError,),
            )
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert '"msg": "shutting down"' in log_path.read_text()
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
