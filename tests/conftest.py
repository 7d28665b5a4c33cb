"""Fixtures shared by every test tier."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from leaky_tokens.auth.adapters.argon2_password_hasher import Argon2PasswordHasher
from leaky_tokens.auth.adapters.migrate import migrate
from leaky_tokens.auth.adapters.rsa_token_crypto import RsaTokenCrypto
from leaky_tokens.auth.adapters.sql_auth_store import SqlAuthStore, make_engine
from leaky_tokens.auth.domain.service import AuthApp, AuthPolicy
from leaky_tokens.runtime.system import SystemRandomness
from tests.support.fakes import FakeClock
from tests.support.postgres import postgres_server

# Cheap argon2 parameters: the tests exercise behaviour, not hashing cost.
FAST_HASHER = {"time_cost": 1, "memory_kib": 1024}


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL started for this test session."""
    with postgres_server() as url:
        yield url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def fresh_store(url: str) -> SqlAuthStore:
    """A migrated store on an empty database."""
    engine = make_engine(url)
    if engine.dialect.name == "postgresql":
        async with engine.begin() as conn:
            from sqlalchemy import text

            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
    await migrate(engine)
    return SqlAuthStore(engine)


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqlAuthStore]:
    store = await fresh_store(f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}")
    yield store
    await store.close()


def make_app(store: SqlAuthStore, clock: FakeClock) -> AuthApp:
    return AuthApp(
        store=store,
        hasher=Argon2PasswordHasher(**FAST_HASHER),
        crypto=RsaTokenCrypto(),
        clock=clock,
        randomness=SystemRandomness(),
        policy=AuthPolicy(),
    )


@pytest.fixture
async def auth_app(sqlite_store: SqlAuthStore, clock: FakeClock) -> AuthApp:
    app = make_app(sqlite_store, clock)
    await app.ensure_signing_key()
    return app
