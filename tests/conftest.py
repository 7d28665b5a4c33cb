"""Fixtures shared by every test tier."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, settings

from leaky_tokens.auth.adapters.in_memory_auth_store import InMemoryAuthStore
from leaky_tokens.auth.adapters.migrate import migrate
from leaky_tokens.auth.adapters.sql_auth_store import SqlAuthStore, make_engine
from leaky_tokens.auth.domain.ports import AuthStore, PasswordHasher, TokenCrypto
from leaky_tokens.auth.domain.service import AuthApp, AuthPolicy
from leaky_tokens.runtime.system import SystemRandomness
from leaky_tokens.stack.orchestrator import Stack
from leaky_tokens.stack.postgres import Postgres
from tests.support.fakes import FakeClock, FakePasswordHasher, FakeTokenCrypto
from tests.support.stack import component, running_stack

# Tests never assert on wall-clock time: Hypothesis' default 200 ms deadline per example and
# its too-slow health check fail properties on a loaded machine (seen in CI-like runs with
# other work on the 2 cores). Tests that need more set their own settings on top.
settings.register_profile("leaky", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("leaky")

# Cheap argon2 parameters: the tests exercise behaviour, not hashing cost.
FAST_HASHER = {"time_cost": 1, "memory_kib": 1024}


@pytest.fixture(autouse=True)
def _own_data_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Services built in-process keep their SQLite files (the token service's purchase
    database, auth.db) in a directory of the test's own, never in ./data."""
    monkeypatch.setenv("LEAKY_DATA_DIR", str(tmp_path_factory.mktemp("data")))


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


@pytest.fixture
def memory_store() -> InMemoryAuthStore:
    return InMemoryAuthStore()


@pytest.fixture
def hasher() -> FakePasswordHasher:
    return FakePasswordHasher()


@pytest.fixture
def crypto() -> FakeTokenCrypto:
    return FakeTokenCrypto()


def make_app(
    store: AuthStore,
    clock: FakeClock,
    hasher: PasswordHasher | None = None,
    crypto: TokenCrypto | None = None,
    policy: AuthPolicy | None = None,
) -> AuthApp:
    """AuthApp on the given store; fast fake hashing and token crypto unless told otherwise."""
    return AuthApp(
        store=store,
        hasher=hasher or FakePasswordHasher(),
        crypto=crypto or FakeTokenCrypto(),
        clock=clock,
        randomness=SystemRandomness(),
        policy=policy or AuthPolicy(),
    )


@pytest.fixture
async def auth_app(
    memory_store: InMemoryAuthStore,
    clock: FakeClock,
    hasher: FakePasswordHasher,
    crypto: FakeTokenCrypto,
) -> AuthApp:
    """The auth domain on in-memory fakes only: no I/O."""
    app = make_app(memory_store, clock, hasher, crypto)
    await app.ensure_signing_key()
    return app


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The native stack (Redis, PostgreSQL, Kafka, Cassandra, Consul, discovery, Envoy), all
    healthy: reused if it runs, brought up otherwise and then stopped after the session."""
    with running_stack() as running:
        yield running


@pytest.fixture(scope="session")
def postgres_url(stack: Stack) -> Iterator[str]:
    """A database of its own in the stack's PostgreSQL, per session: a unique name, so
    sessions sharing one stack (several checkouts, CI jobs) never drop each other's."""
    postgres = component(stack, "postgres")
    assert isinstance(postgres, Postgres)
    dsn = f"host=127.0.0.1 port={postgres.port} user=postgres dbname=postgres"
    name = f"leaky_test_auth_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres.url(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
