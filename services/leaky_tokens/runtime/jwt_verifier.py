"""Verifies RS256 bearer JWTs against a JWKS, refreshing the key set on an unknown kid."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
from jwt.algorithms import RSAAlgorithm

from leaky_tokens.runtime.errors import UnauthenticatedError
from leaky_tokens.runtime.identity import Caller

log = logging.getLogger(__name__)

JwksFetcher = Callable[[], Awaitable[list[dict[str, str]]]]
"""Returns the current JWK set as a list of JWK dicts (kty, kid, n, e, ...)."""


class JwtVerifier:
    """Checks signature, issuer, audience and expiry, and turns the claims into a Caller."""

    def __init__(
        self,
        fetch_jwks: JwksFetcher,
        *,
        issuer: str,
        audience: str,
        leeway_seconds: float = 30.0,
        min_refresh_interval: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch_jwks
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._min_refresh = min_refresh_interval
        self._monotonic = monotonic
        self._keys: dict[str, Any] = {}
        self._last_refresh: float | None = None
        self._lock = asyncio.Lock()

    async def _refresh(self, kid: str) -> None:
        """Fetch the key set; at most once per `min_refresh_interval`.

        A caller arriving inside the interval waits for its end instead of failing, so a key
        published by a rotation is accepted within that delay, while a flood of tokens with
        made-up kids costs the auth service at most one JWKS call per interval.
        """
        async with self._lock:
            if kid in self._keys:  # another caller refreshed while this one waited
                return
            if self._last_refresh is not None:
                wait = self._last_refresh + self._min_refresh - self._monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            self._last_refresh = self._monotonic()
            try:
                jwks = await self._fetch()
            except Exception:  # a JWKS outage must not crash the RPC; keep the cached keys
                log.warning("JWKS refresh failed; keeping %d cached keys", len(self._keys))
                return
            self._keys = {
                k["kid"]: RSAAlgorithm.from_jwk(json.dumps(k))
                for k in jwks
                if k.get("kty") == "RSA"
            }

    async def _key_for(self, kid: str) -> Any:
        if kid not in self._keys:
            await self._refresh(kid)
        key = self._keys.get(kid)
        if key is None:
            raise UnauthenticatedError("unknown signing key", reason="UNKNOWN_KEY_ID")
        return key

    async def verify(self, token: str) -> Caller:
        """The Caller a valid token proves; UnauthenticatedError otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise UnauthenticatedError("malformed token", reason="MALFORMED_TOKEN") from exc
        if header.get("alg") != "RS256" or not isinstance(header.get("kid"), str):
            raise UnauthenticatedError("unsupported token", reason="MALFORMED_TOKEN")
        key = await self._key_for(header["kid"])
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "sub", "iss", "aud", "jti"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise UnauthenticatedError("token expired", reason="TOKEN_EXPIRED") from exc
        except jwt.PyJWTError as exc:
            raise UnauthenticatedError("invalid token", reason="INVALID_TOKEN") from exc
        return Caller(
            user_id=str(claims["sub"]),
            roles=frozenset(str(r) for r in claims.get("roles", [])),
            org_ids=frozenset(str(o) for o in claims.get("orgs", [])),
            token_id=str(claims["jti"]),
        )


def bearer_token(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` metadata entry, if present."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise UnauthenticatedError(
                "authorization must be 'Bearer <token>'", reason="MALFORMED_CREDENTIALS"
            )
    return None
