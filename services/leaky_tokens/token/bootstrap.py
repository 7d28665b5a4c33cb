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
from leaky_tokens.token.servicer import (
    PENDING,
    PUBLIC_METHODS,
    TOKEN_SERVICE,
    TokenServicer,
)

ENV_PREFIX = "LEAKY_TOKEN"


@dataclass(frozen=True)
class TokenSettings(PeerSettings):
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

    def register(server: grpc.aio.Server) -> None:
        token_pb2_grpc.add_TokenServiceServicer_to_server(token, server)

    spec = ServiceSpec(
        "token",
        (TOKEN_SERVICE.full_name,),
        register,
        PUBLIC_METHODS,
        unimplemented_reason=PENDING,
    )
    return peer_components(settings, spec, jwks=jwks, monotonic=monotonic)
