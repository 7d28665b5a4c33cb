"""The token database's engine and migrations (SQLite in embedded mode, PostgreSQL in the stack)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from leaky_tokens.runtime import sql

MIGRATIONS = Path(__file__).with_name("saga_migrations")
# Any fixed number works; it serialises concurrent migrators on one PostgreSQL database.
_PG_LOCK_ID = 0x70CE_5A6A
# Re-exported: the saga store marks its reads with it.
READ_ONLY = sql.READ_ONLY


def make_engine(url: str) -> AsyncEngine:
    """The token database's engine (runtime.sql.make_engine: BEGIN IMMEDIATE on SQLite, so a
    saga step that reads then writes waits for another instead of failing it)."""
    return sql.make_engine(url)


async def migrate(engine: AsyncEngine) -> None:
    """Bring the database to the newest schema; safe to run from several instances at once."""
    await sql.migrate(engine, MIGRATIONS, _PG_LOCK_ID)
