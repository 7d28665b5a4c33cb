"""Test doubles for the ports of time, randomness, sleeping, password hashing and token crypto."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from leaky_tokens.auth.domain.model import SigningKey


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current

    def advance(self, **delta: float) -> None:
        self.current += timedelta(**delta)


class FakePasswordHasher:
    """Salted SHA-256 with a "cost" tag: the PasswordHasher contract at no cost.

    Like argon2id, a missing or foreign hash still costs a comparison and never matches, and a
    hash with another cost tag needs a rehash. `verified` records what verify was asked.
    """

    def __init__(self, cost: int = 1) -> None:
        self.cost = cost
        self.verified: list[str | None] = []
        self._dummy = self._digest("dummy-salt", secrets.token_hex(8), cost)

    @staticmethod
    def _digest(salt: str, password: str, cost: int) -> str:
        digest = hashlib.sha256(f"{salt}:{password}".encode()).hexdigest()
        return f"$fake$c={cost}${salt}${digest}"

    async def hash(self, password: str) -> str:
        return self._digest(secrets.token_hex(8), password, self.cost)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        self.verified.append(password_hash)
        usable = password_hash if password_hash and password_hash.startswith("$fake$") else None
        target = usable or self._dummy
        _, _, tag, salt, _ = target.split("$")
        recomputed = self._digest(salt, password, int(tag.removeprefix("c=")))
        return hmac.compare_digest(recomputed, target) and usable is not None

    def needs_rehash(self, password_hash: str) -> bool:
        return not password_hash.startswith(f"$fake$c={self.cost}$")


class FakeTokenCrypto:
    """HS256 JWTs: keys are random HMAC secrets, so signatures still verify (and forge-fail).

    The JWK it publishes carries no secret (kty "oct" without "k"): it names the key for the
    rotation rules; `decode` verifies a token against the keys the store holds.
    """

    MARK = b"fake-hmac:"

    async def generate_key(self, kid: str, now: datetime) -> SigningKey:
        secret = self.MARK + secrets.token_bytes(32)
        return SigningKey(kid=kid, private_pem=secret, created_at=now, active_from=now)

    def _secret(self, key: SigningKey) -> bytes:
        if not key.private_pem.startswith(self.MARK):
            raise ValueError(f"signing key {key.kid} is not a fake HMAC key")
        return key.private_pem.removeprefix(self.MARK)

    def sign(self, claims: dict[str, Any], key: SigningKey) -> str:
        return jwt.encode(claims, self._secret(key), algorithm="HS256", headers={"kid": key.kid})

    def public_jwk(self, key: SigningKey) -> dict[str, str]:
        self._secret(key)
        return {"kty": "oct", "kid": key.kid, "use": "sig", "alg": "HS256"}

    def decode(self, token: str, keys: list[SigningKey], audience: str) -> dict[str, Any]:
        """The claims of a token signed by one of `keys`; raises jwt errors otherwise."""
        kid = jwt.get_unverified_header(token).get("kid")
        key = next((k for k in keys if k.kid == kid), None)
        if key is None:
            raise jwt.InvalidTokenError(f"unknown kid {kid!r}")
        claims: dict[str, Any] = jwt.decode(
            token,
            self._secret(key),
            algorithms=["HS256"],
            audience=audience,
            options={"verify_exp": False},  # the fake clock is not the wall clock
        )
        return claims


class ScriptedRandomness:
    """Draws from a fixed list, ids numbered: every fault decision is chosen by the test."""

    def __init__(self, draws: Iterable[float] = ()) -> None:
        self.draws = list(draws)
        self.ids = 0

    def new_id(self) -> str:
        self.ids += 1
        return f"id-{self.ids}"

    def uniform(self) -> float:
        return self.draws.pop(0)


class RecordingSleep:
    """Records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
