"""Composition root of the analytics service."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from leaky.analytics.v1 import analytics_pb2_grpc
from leaky_tokens.analytics.servicer import ANALYTICS_SERVICE, PUBLIC_METHODS, AnalyticsServicer
from leaky_tokens.runtime.peer_service import PeerComponents, PeerSettings, peer_components
from leaky_tokens.runtime.server import ServiceSpec
from leaky_tokens.runtime.settings import doc
from leaky_tokens.runtime.system import SystemClock

ENV_PREFIX = "LEAKY_ANALYTICS"


@dataclass(frozen=True)
class AnalyticsSettings(PeerSettings):
    """Analytics service settings (LEAKY_ANALYTICS_<FIELD>)."""

    port: int = field(default=50053, metadata=doc("gRPC port."))
    metrics_port: int = field(default=9103, metadata=doc("Prometheus /metrics port; 0 disables."))


async def build(settings: AnalyticsSettings) -> PeerComponents:
    """Wire the analytics service."""
    servicer = AnalyticsServicer(SystemClock())

    def register(server: grpc.aio.Server) -> None:
        analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(servicer, server)

    spec = ServiceSpec("analytics", (ANALYTICS_SERVICE.full_name,), register, PUBLIC_METHODS)
    return peer_components(settings, spec)
