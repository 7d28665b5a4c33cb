"""The auth domain on its production adapters: argon2id hashing, RSA tokens, the SQL store."""

from __future__ import annotations

import jwt
import pytest

from leaky_tokens.auth.adapters.argon2_password_hasher import Argon2PasswordHasher
from leaky_tokens.auth.adapters.rsa_token_crypto import RsaTokenCrypto
from leaky_tokens.auth.adapters.sql_auth_store import SqlAuthStore
from leaky_tokens.auth.domain.service import AuthApp
from leaky_tokens.runtime.errors import UnauthenticatedError
from leaky_tokens.runtime.jwt_verifier import JwtVerifier
from tests.conftest import FAST_HASHER, make_app
from tests.support.fakes import FakeClock


class SpyHasher(Argon2PasswordHasher):
    """The real hasher, recording what verify was asked to check."""

    def __init__(self, time_cost: int = FAST_HASHER["time_cost"]) -> None:
        super().__init__(time_cost=time_cost, memory_kib=FAST_HASHER["memory_kib"])
        self.verified: list[str | None] = []

    async def verify(self, password_hash: str | None, password: str) -> bool:
        self.verified.append(password_hash)
        return await super().verify(password_hash, password)


async def real_app(store: SqlAuthStore, clock: FakeClock, hasher: SpyHasher) -> AuthApp:
    app = make_app(store, clock, hasher, RsaTokenCrypto())
    await app.ensure_signing_key()
    return app


async def test_password_is_stored_only_as_argon2id_hash(
    sqlite_store: SqlAuthStore, clock: FakeClock
) -> None:
    app = await real_app(sqlite_store, clock, SpyHasher())
    session = await app.register("alice", "alice@example.com", "correct horse")
    user = await sqlite_store.get_user(session.user.id)
    assert user is not None
    assert user.password_hash.startswith("$argon2id$")
    assert "correct horse" not in user.password_hash


async def test_issued_rs256_token_verifies_against_published_jwks(
    sqlite_store: SqlAuthStore, clock: FakeClock
) -> None:
    app = await real_app(sqlite_store, clock, SpyHasher())
    user_id = (await app.register("alice", "alice@example.com", "correct horse")).user.id
    session = await app.login("alice", "correct horse")
    assert jwt.get_unverified_header(session.token)["alg"] == "RS256"
    verifier = JwtVerifier(
        app.jwks, issuer="leaky-tokens-auth", audience="leaky-tokens", leeway_seconds=10**9
    )
    caller = await verifier.verify(session.token)
    assert caller.user_id == user_id
    assert caller.roles == frozenset({"USER"})


async def test_argon2_verifies_unknown_users_against_a_dummy_hash(
    sqlite_store: SqlAuthStore, clock: FakeClock
) -> None:
    hasher = SpyHasher()
    app = await real_app(sqlite_store, clock, hasher)
    await app.register("alice", "alice@example.com", "correct horse")
    for name in ("nobody", "bad\x00name"):
        with pytest.raises(UnauthenticatedError):
            await app.login(name, "correct horse")
    assert hasher.verified == [None, None]
    assert not await hasher.verify(None, "correct horse")
    assert not await hasher.verify("$2b$foreign", "correct horse")


async def test_login_rehashes_an_argon2_hash_made_with_old_parameters(
    sqlite_store: SqlAuthStore, clock: FakeClock
) -> None:
    old = await real_app(sqlite_store, clock, SpyHasher(time_cost=1))
    user_id = (await old.register("alice", "alice@example.com", "correct horse")).user.id
    await (await real_app(sqlite_store, clock, SpyHasher(time_cost=2))).login(
        "alice", "correct horse"
    )
    stored = await sqlite_store.get_user(user_id)
    assert stored is not None
    assert "t=2" in stored.password_hash
    await old.login("alice", "correct horse")  # still the same password
