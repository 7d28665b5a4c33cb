"""API keys at the edge: who a key acts for, cached under a second, and its mesh token (ADR 0041).

Envoy's ext_authz asks on every API-key request. Each answer is remembered for at most
`cache_seconds` (0.5 s by default, always below one second), so a revoked or expired key is
refused within that bound, whichever auth instance answers. A miss runs ValidateApiKey's
rules (AuthApp.validate_api_key: hashed lookup, revocation, expiry, the owner's current roles
and organizations). The mesh token minted for a key is reused while more than half its life
is left and the owner's roles and organizations are unchanged, so RSA signing happens about
once per `token_ttl / 2` per key, not per request; each request still passes the check.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from leaky_tokens.auth.domain.model import ApiKeyOwner
from leaky_tokens.auth.domain.service import AuthApp
from leaky_tokens.runtime.errors import UnauthenticatedError

MAX_CACHE_SECONDS = 1.0  # the revocation bound the edge promises: the cache stays below it


@dataclass(frozen=True, slots=True)
class EdgeIdentity:
    """What a valid key proves, and the mesh token that carries it to the services."""

    owner: ApiKeyOwner
    token: str
    token_expires: float  # wall clock, epoch seconds


@dataclass(frozen=True, slots=True)
class _Entry:
    checked_at: float  # monotonic
    identity: EdgeIdentity | None
    refusal: UnauthenticatedError | None


def _same_owner(a: ApiKeyOwner, b: ApiKeyOwner) -> bool:
    return (a.key.id, a.roles, a.org_ids, a.key.expires_at) == (
        b.key.id,
        b.roles,
        b.org_ids,
        b.key.expires_at,
    )


class ApiKeyGate:
    """Resolves X-Api-Key secrets for Authorization/Check; UnauthenticatedError if refused."""

    def __init__(
        self,
        app: AuthApp,
        *,
        cache_seconds: float = 0.5,
        token_ttl: timedelta = timedelta(seconds=60),
        max_entries: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not 0 <= cache_seconds < MAX_CACHE_SECONDS:
            raise ValueError("the API-key cache must stay below one second")
        self._app = app
        self._cache_seconds = cache_seconds
        self._ttl = token_ttl
        self._max = max_entries
        self._monotonic = monotonic
        self._wall = wall
        # sha256(secret) -> the last answer; the secret itself is never kept.
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()

    async def admit(self, secret: str) -> EdgeIdentity:
        """The identity a key proves now (within the cache bound)."""
        digest = hashlib.sha256(secret.encode()).digest()
        now = self._monotonic()
        entry = self._entries.get(digest)
        if entry is not None and now - entry.checked_at < self._cache_seconds:
            if entry.identity is None:
                assert entry.refusal is not None
                raise entry.refusal
            return entry.identity
        try:
            owner = await self._app.validate_api_key(secret)
        except UnauthenticatedError as refused:
            self._remember(digest, _Entry(now, None, refused))
            raise
        identity = entry.identity if entry is not None else None
        if (
            identity is None
            or not _same_owner(identity.owner, owner)
            or identity.token_expires - self._wall() < self._ttl.total_seconds() / 2
        ):
            token, expires = await self._app.mesh_token(owner, self._ttl)
            identity = EdgeIdentity(owner, token, expires.timestamp())
        self._remember(digest, _Entry(now, identity, None))
        return identity

    def _remember(self, digest: bytes, entry: _Entry) -> None:
        self._entries[digest] = entry
        self._entries.move_to_end(digest)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
