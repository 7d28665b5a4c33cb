"""Composition root of the catalog: reflection and health, no RPCs of its own."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import grpc

from leaky_tokens.runtime.server import ServerSettings, ServiceSpec
from leaky_tokens.runtime.settings import doc
from leaky_tokens.topology import SERVICES, Service, public_services

ENV_PREFIX = "LEAKY_CATALOG"


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


async def build(
    settings: CatalogSettings, *, services: tuple[Service, ...] = SERVICES
) -> CatalogComponents:
    """A server that only describes the public API: every proto service of `services`."""

    def register(server: grpc.aio.Server) -> None:
        """No servicers: reflection and health are added by the runtime."""

    # Reflection answers from the default descriptor pool: load every service's protos.
    for service in services:
        if service.proto_module:
            importlib.import_module(service.proto_module)
    described = tuple(public_services(services))
    return CatalogComponents(ServiceSpec("catalog", (), register, reflection_only=described))
