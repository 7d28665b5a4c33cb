"""grpc.aio server bootstrap: health, reflection, metrics, telemetry and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

import grpc

# `health.aio` is an alias of this module, which mypy cannot follow.
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.registry import Collector

from leaky_tokens import VERSION
from leaky_tokens.runtime.consul_registration import ConsulRegistrar, Registration
from leaky_tokens.runtime.interceptor import LeakyServerInterceptor, ServerMetrics
from leaky_tokens.runtime.jwt_verifier import JwtVerifier
from leaky_tokens.runtime.settings import doc
from leaky_tokens.runtime.telemetry import Tracing, tracing

log = logging.getLogger(__name__)

# Hard cap enforced by gRPC core; the application limit below it answers INVALID_ARGUMENT.
CORE_MESSAGE_CAP = 16 * 1024 * 1024
# Probes and discovery (Consul, Envoy, grpcurl, operators) never carry credentials.
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
REFLECTION = f"/{reflection.SERVICE_NAME}/ServerReflectionInfo"
PUBLIC_PROBES = frozenset({HEALTH_CHECK, HEALTH_WATCH, REFLECTION})


@dataclass(frozen=True)
class ServerSettings:
    """Settings every gRPC service shares (prefix LEAKY_<SVC>_)."""

    host: str = field(default="127.0.0.1", metadata=doc("Address the gRPC server binds."))
    port: int = field(default=0, metadata=doc("gRPC port (0 picks a free one)."))
    metrics_port: int = field(default=0, metadata=doc("Prometheus /metrics port; 0 disables."))
    log_level: str = field(default="INFO", metadata=doc("Log level."))
    max_message_bytes: int = field(
        default=4 * 1024 * 1024, metadata=doc("Largest accepted request; larger gets 400.")
    )
    shutdown_delay_seconds: float = field(
        default=1.0,
        metadata=doc(
            "After SIGTERM: NOT_SERVING this long before refusing new RPCs (lets "
            "load balancers notice)."
        ),
    )
    shutdown_grace_seconds: float = field(
        default=5.0, metadata=doc("Then how long in-flight RPCs may finish.")
    )
    consul_address: str = field(
        default="", metadata=doc("host:port of a Consul agent to register with; empty = none.")
    )
    advertise_host: str = field(
        default="", metadata=doc("Address registered in Consul; empty = the bind host.")
    )
    otlp_endpoint: str = field(
        default="", metadata=doc("OTLP gRPC endpoint for traces; empty turns tracing off.")
    )
    jwt_issuer: str = field(default="leaky-tokens-auth", metadata=doc("Expected JWT iss."))
    jwt_audience: str = field(default="leaky-tokens", metadata=doc("Expected JWT aud."))
    processes: int = field(
        default=1,
        metadata=doc(
            "Processes sharing the gRPC port (SO_REUSEPORT) where the service allows more "
            "than 1; process i serves /metrics on metrics_port+i, only the first registers "
            "in Consul."
        ),
    )


@dataclass
class ServiceSpec:
    """What a service contributes to the shared server: its servicers and public RPCs."""

    slug: str
    service_names: tuple[str, ...]
    register: Callable[[grpc.aio.Server], None]
    public_methods: frozenset[str] = frozenset()
    # Services this server describes through reflection without serving them (the catalog).
    reflection_only: tuple[str, ...] = ()
    # Why RPCs the servicers inherit from the generated base answer UNIMPLEMENTED.
    unimplemented_reason: str = "it has not been written yet"
    # The service's own metrics, exported on /metrics beside the server's call metrics.
    collectors: tuple[Collector, ...] = ()


@dataclass
class RunningServer:
    """A started server and the port it bound."""

    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    tracing: Tracing
    metrics: CollectorRegistry
    registrar: ConsulRegistrar | None = None
    metrics_http: WSGIServer | None = None

    @property
    def metrics_port(self) -> int:
        """The port /metrics is served on, as bound; 0 when metrics are off."""
        return int(self.metrics_http.server_port) if self.metrics_http is not None else 0

    async def stop(self, grace: float, delay: float = 0.0) -> None:
        """Go NOT_SERVING and leave Consul (bounded), wait `delay`, then drain and stop.

        NOT_SERVING comes first: it is what takes the instance out of Envoy's rotation, and it
        must not wait on a Consul that may hang.
        """
        await self.health.enter_graceful_shutdown()
        leaving = [asyncio.sleep(delay)]
        if self.registrar is not None:
            leaving.append(self.registrar.stop())
        await asyncio.gather(*leaving)
        await self.server.stop(grace)
        if self.metrics_http is not None:  # free the port (tests start many servers)
            await asyncio.to_thread(self.metrics_http.shutdown)
            self.metrics_http.server_close()
        # Flush buffered spans; the exporter blocks, so keep it off the event loop.
        await asyncio.to_thread(self.tracing.shutdown)


async def start_server(
    spec: ServiceSpec,
    settings: ServerSettings,
    verifier: JwtVerifier | None,
    *,
    reuse_port: bool = False,
) -> RunningServer:
    """Build, bind and start the server; mark every service SERVING.

    `reuse_port` lets sibling processes bind the same port (runtime/workers.py); off, a
    port already taken fails the bind instead of silently sharing its traffic.
    """
    registry = CollectorRegistry()
    for collector in spec.collectors:
        registry.register(collector)
    interceptor = LeakyServerInterceptor(
        verifier=verifier,
        public_methods=spec.public_methods | PUBLIC_PROBES,
        metrics=ServerMetrics(spec.slug, registry),
        max_message_bytes=settings.max_message_bytes,
        unimplemented_reason=spec.unimplemented_reason,
    )
    traces = tracing(spec.slug, settings.otlp_endpoint)
    server = grpc.aio.server(
        interceptors=[*traces.interceptors, interceptor],
        options=[
            ("grpc.max_receive_message_length", CORE_MESSAGE_CAP),
            ("grpc.max_send_message_length", CORE_MESSAGE_CAP),
            ("grpc.so_reuseport", int(reuse_port)),
        ],
    )
    spec.register(server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*spec.service_names, *spec.reflection_only, health.SERVICE_NAME, reflection.SERVICE_NAME),
        server,
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    await server.start()
    for name in ("", *spec.service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    metrics_http = None
    if settings.metrics_port:
        metrics_http, _ = start_http_server(
            settings.metrics_port, addr=settings.host, registry=registry
        )
    running = RunningServer(
        server, port, health_servicer, traces, registry, metrics_http=metrics_http
    )
    # Tests and operators read the bound ports from this line (port 0 picks a free one).
    serving: dict[str, object] = {
        "service": spec.slug,
        "address": f"{settings.host}:{port}",
        "pid": os.getpid(),  # processes sharing a port each log their own line
    }
    if running.metrics_port:
        serving["metrics_address"] = f"{settings.host}:{running.metrics_port}"
    log.info("serving", extra=serving)
    if settings.consul_address:
        host = settings.advertise_host or settings.host
        # Bound everywhere (containers): register the address peers can reach.
        if host in ("0.0.0.0", "::"):  # noqa: S104 (a comparison, not a bind)
            host = socket.gethostbyname(socket.gethostname())
        running.registrar = ConsulRegistrar(
            settings.consul_address,
            Registration(
                service_id=f"{spec.slug}-{host}-{port}",
                name=spec.slug,
                address=host,
                port=port,
                tags=("grpc", f"version-{VERSION}"),
                meta={"version": VERSION},
            ),
            recheck=5.0,
        )
        running.registrar.start()
    return running


async def serve_until_signalled(running: RunningServer, settings: ServerSettings) -> None:
    """Block until SIGTERM or SIGINT, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace_seconds})
    await running.stop(settings.shutdown_grace_seconds, settings.shutdown_delay_seconds)
