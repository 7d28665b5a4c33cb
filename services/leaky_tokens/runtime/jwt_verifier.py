"""Verifies RS256 bearer JWTs against a JWKS, refreshing the key set on an unknown kid."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.algorithms import RSAAlgorithm

from leaky_tokens.runtime.errors import UnauthenticatedError, UnavailableError
from leaky_tokens.runtime.identity import Caller, mesh_audience

log = logging.getLogger(__name__)

JwksFetcher = Callable[[], Awaitable[list[dict[str, str]]]]
"""Returns the current JWK set as a list of JWK dicts (kty, kid, n, e, ...)."""

_MAX_REMEMBERED_UNKNOWN = 1024
DEFAULT_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class _Verified:
    """A token that passed every check: what it proved, the key object it was checked with,
    and the wall-clock span (epoch seconds, leeway applied) its time claims accept."""

    caller: Caller
    kid: str
    key: Any
    not_before: float
    expires: float


class JwtVerifier:
    """Checks signature, issuer, audience and expiry, and turns the claims into a Caller.

    Key-set policy (ADR 0005, 0013):
    - an unknown kid triggers a refresh, at most one per `min_refresh_interval`; callers who
      arrive while one is due wait for it (a rotated key is accepted within that interval);
    - a kid still unknown after a refresh is rejected at once for the rest of the interval,
      so made-up kids cannot queue requests or hammer the auth service;
    - once the set is `max_age` seconds old the next verification refetches it first, so a
      key the auth service stopped publishing is refused at most `max_age` after it went;
    - if that refetch fails the old set is still trusted for `outage_grace` seconds more,
      then every verification answers UNAVAILABLE until a fetch succeeds (fail closed);
    - `max_age=0` disables the cache: every verification reads the key source, for a local
      source (the auth service's own store), so a retired key is refused at once.

    Verified tokens (ADR 0029): the last `cache_size` tokens that passed are remembered by
    their SHA-256, with the key object that verified them. A remembered token still goes
    through the key-set policy above for its kid on every call, and is answered from memory
    only while that kid still maps to that same key object and `wall` (epoch seconds) is
    inside its exp/iat/nbf span; so expiry and key retirement refuse it exactly when they
    would refuse a token seen for the first time. Refusals are never remembered.
    """

    def __init__(
        self,
        fetch_jwks: JwksFetcher,
        *,
        issuer: str,
        audience: str,
        leeway_seconds: float = 30.0,
        min_refresh_interval: float = 1.0,
        max_age: float = 30.0,
        outage_grace: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
        cache_size: int = DEFAULT_CACHE_SIZE,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._fetch = fetch_jwks
        self._issuer = issuer
        self._audience = audience
        # Login tokens, and the mesh tokens auth mints for API-key calls at the edge (ADR 0041).
        self._audiences = [audience, mesh_audience(audience)]
        self._leeway = leeway_seconds
        self._min_refresh = min_refresh_interval
        self._max_age = max_age
        self._grace = outage_grace
        self._monotonic = monotonic
        self._keys: dict[str, Any] = {}
        self._parsed: dict[tuple[str, str, str], Any] = {}  # (kid, n, e) -> key, current set
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last attempt, successful or not
        self._generation = 0
        self._unknown: dict[str, float] = {}  # kid -> when it was found missing
        self._lock = asyncio.Lock()
        self._cache_size = cache_size
        self._wall = wall  # PyJWT reads the same system clock for a token seen first
        self._verified: OrderedDict[bytes, _Verified] = OrderedDict()

    @property
    def cached(self) -> int:
        """How many verified tokens are remembered now (at most `cache_size`)."""
        return len(self._verified)

    def _install(self, jwks: list[dict[str, str]]) -> None:
        # Parsing a JWK costs more than the fetch of a local set; reuse unchanged keys.
        parsed = {}
        for jwk in jwks:
            if jwk.get("kty") != "RSA" or not isinstance(jwk.get("kid"), str):
                continue
            ident = (jwk["kid"], jwk.get("n", ""), jwk.get("e", ""))
            parsed[ident] = self._parsed.get(ident) or RSAAlgorithm.from_jwk(json.dumps(jwk))
        self._parsed = parsed
        self._keys = {kid: key for (kid, _, _), key in parsed.items()}

    async def _refresh(self, seen_generation: int, *, wait: bool) -> None:
        async with self._lock:
            if self._generation != seen_generation:  # someone refreshed while we waited
                return
            if self._attempted_at is not None:
                delay = self._attempted_at + self._min_refresh - self._monotonic()
                if delay > 0 and not wait:
                    return
                if delay > 0:
                    await asyncio.sleep(min(delay, self._min_refresh))
            self._attempted_at = self._monotonic()
            self._generation += 1
            try:
                jwks = await self._fetch()
            except Exception as error:  # keep the cached keys for the grace period
                log.warning("JWKS refresh failed", extra={"error": type(error).__name__})
                return
            self._install(jwks)
            self._fetched_at = self._monotonic()
            self._unknown.clear()

    def _older_than(self, seconds: float) -> bool:
        return self._fetched_at is None or self._monotonic() - self._fetched_at > seconds

    async def _key_for(self, kid: str) -> Any:
        if self._max_age <= 0:  # no cache: the source is local and cheap to read
            self._install(await self._fetch())
        else:
            now = self._monotonic()
            missing_since = self._unknown.get(kid)
            recently_missing = missing_since is not None and now - missing_since < self._min_refresh
            if kid not in self._keys and not recently_missing:
                await self._refresh(self._generation, wait=True)
            elif self._older_than(self._max_age):  # refresh if allowed now, never wait for it
                await self._refresh(self._generation, wait=False)
            if self._older_than(self._max_age + self._grace):
                raise UnavailableError("signing keys are unavailable", reason="JWKS_UNAVAILABLE")
        key = self._keys.get(kid)
        if key is not None:
            return key
        if len(self._unknown) >= _MAX_REMEMBERED_UNKNOWN:
            self._unknown.clear()
        self._unknown.setdefault(kid, self._monotonic())
        raise UnauthenticatedError("unknown signing key", reason="UNKNOWN_KEY_ID")

    async def verify(self, token: str) -> Caller:
        """The Caller a valid token proves; UnauthenticatedError otherwise."""
        if self._cache_size <= 0:
            return (await self._verify(token)).caller
        digest = hashlib.sha256(token.encode()).digest()
        seen = self._verified.get(digest)
        if seen is not None:
            # The key-set policy runs as for any token: refresh when due, UNKNOWN_KEY_ID once
            # the kid left the set, UNAVAILABLE past the outage grace.
            key = await self._key_for(seen.kid)
            now = self._wall()
            if key is seen.key and seen.not_before <= now < seen.expires:
                if digest in self._verified:  # another call may have dropped it meanwhile
                    self._verified.move_to_end(digest)
                return seen.caller
            self._verified.pop(digest, None)
            if key is seen.key and now >= seen.expires:
                raise UnauthenticatedError("token expired", reason="TOKEN_EXPIRED")
            # A different key under that kid, or a clock stepped back: check it in full.
        verified = await self._verify(token)
        self._verified[digest] = verified
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return verified.caller

    async def _verify(self, token: str) -> _Verified:
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
                audience=self._audiences,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "sub", "iss", "aud", "jti"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise UnauthenticatedError("token expired", reason="TOKEN_EXPIRED") from exc
        except jwt.PyJWTError as exc:
            raise UnauthenticatedError("invalid token", reason="INVALID_TOKEN") from exc
        caller = Caller(
            user_id=str(claims["sub"]),
            roles=frozenset(str(r) for r in claims.get("roles", [])),
            org_ids=frozenset(str(o) for o in claims.get("orgs", [])),
            token_id=str(claims["jti"]),
            api_key_id=str(claims.get("akid", "")),
        )
        # PyJWT accepted these as integers: refused once exp <= now - leeway, and while
        # iat or nbf > now + leeway.
        starts = max(int(claims["iat"]), int(claims.get("nbf", claims["iat"])))
        return _Verified(
            caller, header["kid"], key, starts - self._leeway, int(claims["exp"]) + self._leeway
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
