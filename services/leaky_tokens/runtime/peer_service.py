"""Composition shared by services that verify tokens with the auth service's JWKS."""

from __future__ import annotations

from dataclasses import dataclass, field

from leaky_tokens.runtime.jwks_client import GrpcJwksFetcher
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
    """A built service: its spec, the verifier of its callers' tokens and its JWKS client."""

    spec: ServiceSpec
    verifier: JwtVerifier
    jwks: GrpcJwksFetcher

    async def close(self) -> None:
        """Close the channel to the auth service."""
        await self.jwks.close()


def peer_components(settings: PeerSettings, spec: ServiceSpec) -> PeerComponents:
    """Components of a service that verifies tokens with AuthService.GetJwks."""
    jwks = GrpcJwksFetcher(settings.auth_target)
    verifier = JwtVerifier(jwks, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    return PeerComponents(spec, verifier, jwks)
