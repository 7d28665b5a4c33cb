"""Migrations 0002-0004 on a database that already holds organizations and signing keys
(SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine

from leaky_tokens.auth.adapters.migrate import MIGRATIONS, migrate
from leaky_tokens.auth.adapters.sql_auth_store import SqlAuthStore, make_engine
from leaky_tokens.auth.domain.model import Membership, Organization
from leaky_tokens.auth.domain.ports import DuplicateError

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    if engine.dialect.name == "postgresql":
        async with engine.begin() as conn:
            await conn.execute(sa.text("DROP SCHEMA public CASCADE"))
            await conn.execute(sa.text("CREATE SCHEMA public"))
    yield engine
    await engine.dispose()


async def upgrade_to(engine: AsyncEngine, revision: str) -> None:
    def run(connection: sa.Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)


async def seed(engine: AsyncEngine, *org_names: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO users (id, username, username_key, email, password_hash, created_at)"
                " VALUES ('u1', 'alice', 'alice', 'a@example.com', 'x', '2026-01-01 00:00:00')"
            )
        )
        for n, name in enumerate(org_names):
            await conn.execute(
                sa.text(
                    "INSERT INTO organizations (id, name, owner_id, created_at)"
                    " VALUES (:id, :name, 'u1', '2026-01-01 00:00:00')"
                ),
                {"id": f"o{n}", "name": name},
            )


async def test_existing_org_names_get_their_key_and_then_clash_by_case(
    engine: AsyncEngine,
) -> None:
    await upgrade_to(engine, "0001")
    await seed(engine, "Acme", "Zürich")
    await migrate(engine)
    store = SqlAuthStore(engine)
    kept = await store.get_org("o1")
    assert kept is not None
    assert kept.name == "Zürich"
    clash = Organization("o9", "ZÜRICH", "u1", kept.created_at)
    with pytest.raises(DuplicateError) as info:
        await store.add_org(clash, Membership("o9", "u1", "OWNER", kept.created_at))
    assert info.value.field == "name"


async def test_names_that_already_clash_by_case_stop_the_migration_with_both_names(
    engine: AsyncEngine,
) -> None:
    await upgrade_to(engine, "0001")
    await seed(engine, "Acme", "ACME", "other")
    with pytest.raises(RuntimeError, match="ACME, Acme"):
        await migrate(engine)


async def seed_at_0002(engine: AsyncEngine, *org_names: str) -> None:
    # As the service wrote rows at revision 0002: name_key = casefold(name).
    await seed(engine)
    async with engine.begin() as conn:
        for n, name in enumerate(org_names):
            await conn.execute(
                sa.text(
                    "INSERT INTO organizations (id, name, name_key, owner_id, created_at)"
                    " VALUES (:id, :name, :key, 'u1', '2026-01-01 00:00:00')"
                ),
                {"id": f"o{n}", "name": name, "key": name.casefold()},
            )


async def test_0003_recomputes_keys_so_lookalikes_clash(engine: AsyncEngine) -> None:
    await upgrade_to(engine, "0002")
    await seed_at_0002(engine, "\uff21cme", "Zürich")  # fullwidth A: its old key was distinct
    await migrate(engine)
    store = SqlAuthStore(engine)
    kept = await store.get_org("o0")
    assert kept is not None
    for n, clash in enumerate(("ACME", "Zu\u0308rich")):
        with pytest.raises(DuplicateError):
            await store.add_org(
                Organization(f"o9{n}", clash, "u1", kept.created_at),
                Membership(f"o9{n}", "u1", "OWNER", kept.created_at),
            )


async def test_0003_stops_on_names_that_now_clash_naming_both(engine: AsyncEngine) -> None:
    await upgrade_to(engine, "0002")
    await seed_at_0002(engine, "Caf\u00e9", "Cafe\u0301", "other")
    with pytest.raises(RuntimeError, match="normalisation") as info:
        await migrate(engine)
    assert "Caf\\xe9" in str(info.value)
    assert "Cafe\\u0301" in str(info.value)


async def test_0004_makes_every_existing_signing_key_active_from_its_creation(
    engine: AsyncEngine,
) -> None:
    await upgrade_to(engine, "0003")
    async with engine.begin() as conn:
        for kid, created in (("k-old", "2026-01-01 00:00:00"), ("k-new", "2026-02-01 00:00:00")):
            await conn.execute(
                sa.text(
                    "INSERT INTO signing_keys (kid, private_pem, created_at)"
                    " VALUES (:kid, :pem, :created)"
                ),
                {"kid": kid, "pem": b"pem", "created": created},
            )
    await migrate(engine)
    keys = await SqlAuthStore(engine).list_signing_keys(5)
    assert [k.kid for k in keys] == ["k-new", "k-old"]
    assert all(k.active_from == k.created_at for k in keys)
    assert keys[0].created_at.month == 2
