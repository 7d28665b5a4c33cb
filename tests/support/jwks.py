"""A signing key set that can rotate, for tests of services that verify JWTs."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
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


def current_signing_key(auth_db: Path) -> tuple[str, rsa.RSAPrivateKey]:
    """The key auth signs with now, read from its SQLite database (embedded `leaky up` keeps
    keys unencrypted unless LEAKY_AUTH_SIGNING_KEY_PASSPHRASE is set): the newest whose
    active_from has passed (a rotated key is published before it signs, ADR 0049). SQLite
    holds naive UTC timestamps, which order as text."""
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    with sqlite3.connect(auth_db) as db:
        kid, pem = db.execute(
            "SELECT kid, private_pem FROM signing_keys WHERE active_from <= ?"
            " ORDER BY seq DESC LIMIT 1",
            (now,),
        ).fetchone()
    key = load_pem_private_key(bytes(pem), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return str(kid), key
