"""Composition root of the catalog: reflection and health, no RPCs of its own."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from leaky.analytics.v1 import analytics_pb2
from leaky.auth.v1 import auth_pb2
from leaky.token.v1 import token_pb2
from leaky_tokens.runtime.server import ServerSettings, ServiceSpec
from leaky_tokens.runtime.settings import doc

ENV_PREFIX = "LEAKY_CATALOG"

PUBLIC_SERVICES = tuple(
    service.full_name
    for module in (auth_pb2, token_pb2, analytics_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
)


@dataclass(frozen=True)
class CatalogSettings(ServerSettings):
    """Catalog settings (LEAKY_CATALOG_<FIELD>)."""

    port: int = field(default=50050, metadata=doc("gRPC port."))
    metrics_port: int = field(default=0, metadata=doc("Prometheus /metrics port; 0 disables."))


@dataclass
class CatalogComponents:
    """The catalog's spec; it verifies no tokens because it serves no protected RPC."""

    spec: ServiceSpec
    verifier: None = None

    async def close(self) -> None:
        """Nothing to release."""


async def build(settings: CatalogSettings) -> CatalogComponents:
    """A server that only describes the public API."""

    def register(server: grpc.aio.Server) -> None:
        """No servicers: reflection and health are added by the runtime."""

    return CatalogComponents(ServiceSpec("catalog", (), register, reflection_only=PUBLIC_SERVICES))
