"""A signing key set that can rotate, for tests of services that verify JWTs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


class KeySet:
    """A JWKS source that counts fetches and can fail, add and retire keys."""

    def __init__(self, issuer: str = "iss", audience: str = "aud") -> None:
        self.issuer, self.audience = issuer, audience
        self.private: dict[str, rsa.RSAPrivateKey] = {}
        self.fetches = 0
        self.down = False
        self.add("k1")

    def add(self, kid: str) -> None:
        self.private[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    async def fetch(self) -> list[dict[str, str]]:
        self.fetches += 1
        if self.down:
            raise ConnectionError("the key source is unreachable")
        return [
            {**json.loads(RSAAlgorithm.to_jwk(k.public_key())), "kid": kid}
            for kid, k in self.private.items()
        ]

    def token(self, kid: str = "k1", **overrides: object) -> str:
        now = datetime.now(UTC)
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "user-1",
            "roles": ["USER"],
            "orgs": ["org-1"],
            "iat": now,
            "exp": now + timedelta(minutes=5),
            "jti": "j1",
            **overrides,
        }
        return jwt.encode(claims, self.private[kid], algorithm="RS256", headers={"kid": kid})


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying a bearer token."""
    return (("authorization", f"Bearer {token}"),)
