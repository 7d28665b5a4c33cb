"""Composition shared by services that verify tokens with the auth service's JWKS."""

from __future__ import annotations

from dataclasses import dataclass, field

from leaky_tokens.runtime.jwks_client import grpc_jwks_fetcher
from leaky_tokens.runtime.jwt_verifier import JwtVerifier
from leaky_tokens.runtime.server import ServerSettings, ServiceSpec
from leaky_tokens.runtime.settings import doc


@dataclass(frozen=True)
class PeerSettings(ServerSettings):
    """Settings of a service that trusts tokens issued by the auth service."""

    auth_target: str = field(
        default="127.0.0.1:50051", metadata=doc("host:port of the auth service (for its JWKS).")
    )


@dataclass
class PeerComponents:
    """A built service: its spec and the verifier of its callers' tokens."""

    spec: ServiceSpec
    verifier: JwtVerifier

    async def close(self) -> None:
        """Nothing to release yet."""


def auth_verifier(settings: PeerSettings) -> JwtVerifier:
    """A JwtVerifier backed by AuthService.GetJwks."""
    return JwtVerifier(
        grpc_jwks_fetcher(settings.auth_target),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
