"""Composition shared by services that verify tokens with the auth service's JWKS."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from leaky_tokens.runtime.jwks_client import GrpcJwksFetcher
from leaky_tokens.runtime.jwt_verifier import JwksFetcher, JwtVerifier
from leaky_tokens.runtime.server import ServerSettings, ServiceSpec
from leaky_tokens.runtime.settings import doc


@dataclass(frozen=True)
class PeerSettings(ServerSettings):
    """Settings of a service that trusts tokens issued by the auth service."""

    auth_target: str = field(
        default="127.0.0.1:50051", metadata=doc("host:port of the auth service (for its JWKS).")
    )
    jwks_max_age_seconds: float = field(
        default=30.0,
        metadata=doc(
            "Cached JWKS is refetched once this old: a signing key the auth service retired "
            "is refused at most this many seconds later."
        ),
    )
    jwks_outage_grace_seconds: float = field(
        default=30.0,
        metadata=doc(
            "If that refetch fails, cached keys are trusted this much longer; then protected "
            "RPCs answer UNAVAILABLE until the auth service is reachable."
        ),
    )


@dataclass
class PeerComponents:
    """A built service: its spec and the verifier of its callers' tokens."""

    spec: ServiceSpec
    verifier: JwtVerifier
    # The JWKS client this composition opened (None when the caller passed its own fetcher).
    owned_jwks: GrpcJwksFetcher | None = None

    async def close(self) -> None:
        """Close the channel to the auth service, if this composition opened it."""
        if self.owned_jwks is not None:
            await self.owned_jwks.close()


def peer_components(
    settings: PeerSettings,
    spec: ServiceSpec,
    *,
    jwks: JwksFetcher | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> PeerComponents:
    """Components of a service that verifies tokens with AuthService.GetJwks.

    `jwks` replaces the gRPC client (tests pass an in-process key set); `monotonic` is the
    clock that ages the cached key set.
    """
    owned = None
    if jwks is None:
        jwks = owned = GrpcJwksFetcher(settings.auth_target)
    verifier = JwtVerifier(
        jwks,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        max_age=settings.jwks_max_age_seconds,
        outage_grace=settings.jwks_outage_grace_seconds,
        monotonic=monotonic,
    )
    return PeerComponents(spec, verifier, owned)
