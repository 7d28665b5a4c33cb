"""Composition root of the token service."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from leaky.token.v1 import token_pb2_grpc
from leaky_tokens.runtime.jwt_verifier import JwksFetcher
from leaky_tokens.runtime.peer_service import PeerComponents, PeerSettings, peer_components
from leaky_tokens.runtime.ports import Clock
from leaky_tokens.runtime.server import ServiceSpec
from leaky_tokens.runtime.settings import doc
from leaky_tokens.runtime.system import SystemClock
from leaky_tokens.token.adapters.settings import TokenStoreSettings  # RLS (ADR 0025)
from leaky_tokens.token.rls_wiring import (  # RLS (ADR 0025)
    RLS_PUBLIC_METHODS,
    RLS_SERVICE_NAME,
    RlsSettings,
    WithRls,
    build_rls,
)
from leaky_tokens.token.servicer import (
    PENDING,
    PUBLIC_METHODS,
    TOKEN_SERVICE,
    TokenServicer,
)

ENV_PREFIX = "LEAKY_TOKEN"


@dataclass(frozen=True)
class TokenSettings(PeerSettings, TokenStoreSettings, RlsSettings):  # RLS: + store, rls
    """Token service settings (LEAKY_TOKEN_<FIELD>)."""

    port: int = field(default=50052, metadata=doc("gRPC port."))
    metrics_port: int = field(default=9102, metadata=doc("Prometheus /metrics port; 0 disables."))


async def build(
    settings: TokenSettings,
    *,
    clock: Clock | None = None,
    jwks: JwksFetcher | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> PeerComponents:
    """Wire the token service; collaborators default to the real ones.

    `clock` tells the time, `jwks` fetches the auth service's signing keys (default: gRPC to
    `settings.auth_target`) and `monotonic` ages the cached key set.
    """
    # The generated base declares every RPC abstract; the ones not written yet are answered
    # UNIMPLEMENTED by the interceptor (mypy lists them here until they exist).
    token = TokenServicer(clock or SystemClock())  # type: ignore[abstract]
    rls = build_rls(settings, settings, clock or SystemClock())  # RLS (ADR 0025)

    def register(server: grpc.aio.Server) -> None:
        token_pb2_grpc.add_TokenServiceServicer_to_server(token, server)
        rls.register(server)  # RLS (ADR 0025)

    spec = ServiceSpec(
        "token",
        (TOKEN_SERVICE.full_name, RLS_SERVICE_NAME),  # RLS: served and described by reflection
        register,
        PUBLIC_METHODS | RLS_PUBLIC_METHODS,  # RLS: Envoy calls without a JWT (ADR 0025)
        unimplemented_reason=PENDING,
    )
    peer = peer_components(settings, spec, jwks=jwks, monotonic=monotonic)
    return WithRls(peer.spec, peer.verifier, peer.owned_jwks, rls.close)  # RLS (ADR 0025)
