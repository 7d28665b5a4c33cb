"""Composition root of the analytics service."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from leaky.analytics.v1 import analytics_pb2_grpc
from leaky_tokens.analytics.servicer import (
    ANALYTICS_SERVICE,
    PENDING,
    PUBLIC_METHODS,
    AnalyticsServicer,
)
from leaky_tokens.runtime.jwt_verifier import JwksFetcher
from leaky_tokens.runtime.peer_service import PeerComponents, PeerSettings, peer_components
from leaky_tokens.runtime.ports import Clock
from leaky_tokens.runtime.server import ServiceSpec
from leaky_tokens.runtime.settings import doc
from leaky_tokens.runtime.system import SystemClock

ENV_PREFIX = "LEAKY_ANALYTICS"


@dataclass(frozen=True)
class AnalyticsSettings(PeerSettings):
    """Analytics service settings (LEAKY_ANALYTICS_<FIELD>)."""

    port: int = field(default=50053, metadata=doc("gRPC port."))
    metrics_port: int = field(default=9103, metadata=doc("Prometheus /metrics port; 0 disables."))


async def build(
    settings: AnalyticsSettings,
    *,
    clock: Clock | None = None,
    jwks: JwksFetcher | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> PeerComponents:
    """Wire the analytics service; collaborators default to the real ones.

    `clock` tells the time, `jwks` fetches the auth service's signing keys (default: gRPC to
    `settings.auth_target`) and `monotonic` ages the cached key set.
    """
    # The generated base declares every RPC abstract; the ones not written yet are answered
    # UNIMPLEMENTED by the interceptor (mypy lists them here until they exist).
    servicer = AnalyticsServicer(clock or SystemClock())  # type: ignore[abstract]

    def register(server: grpc.aio.Server) -> None:
        analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(servicer, server)

    spec = ServiceSpec(
        "analytics",
        (ANALYTICS_SERVICE.full_name,),
        register,
        PUBLIC_METHODS,
        unimplemented_reason=PENDING,
    )
    return peer_components(settings, spec, jwks=jwks, monotonic=monotonic)
