"""Composition root of the provider stubs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from leaky.provider.v1 import provider_pb2_grpc
from leaky_tokens.provider.servicer import (
    PENDING,
    PROVIDER_SERVICE,
    PUBLIC_METHODS,
    ProviderServicer,
)
from leaky_tokens.runtime.jwt_verifier import JwksFetcher
from leaky_tokens.runtime.peer_service import PeerComponents, PeerSettings, peer_components
from leaky_tokens.runtime.server import ServiceSpec
from leaky_tokens.runtime.settings import doc

ENV_PREFIX = "LEAKY_PROVIDER"


@dataclass(frozen=True)
class ProviderSettings(PeerSettings):
    """Provider stub settings (LEAKY_PROVIDER_<FIELD>)."""

    port: int = field(default=50054, metadata=doc("gRPC port."))
    metrics_port: int = field(default=9104, metadata=doc("Prometheus /metrics port; 0 disables."))


async def build(
    settings: ProviderSettings,
    *,
    jwks: JwksFetcher | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> PeerComponents:
    """Wire the provider stubs; collaborators default to the real ones.

    `jwks` fetches the auth service's signing keys (default: gRPC to `settings.auth_target`)
    and `monotonic` ages the cached key set.
    """
    # The generated base declares Chat abstract; until it is written the interceptor
    # answers it UNIMPLEMENTED (mypy lists it here until then).
    servicer = ProviderServicer()  # type: ignore[abstract]

    def register(server: grpc.aio.Server) -> None:
        provider_pb2_grpc.add_ProviderServiceServicer_to_server(servicer, server)

    spec = ServiceSpec(
        "provider",
        (PROVIDER_SERVICE.full_name,),
        register,
        PUBLIC_METHODS,
        unimplemented_reason=PENDING,
    )
    return peer_components(settings, spec, jwks=jwks, monotonic=monotonic)
