"""Applies the auth schema migrations (Alembic) to a SQLite or PostgreSQL database."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from leaky_tokens.runtime import sql

MIGRATIONS = Path(__file__).with_name("migrations")
# Any fixed number works; it serialises concurrent migrators on one PostgreSQL database.
_PG_LOCK_ID = 0x1EA4_A07


async def migrate(engine: AsyncEngine) -> None:
    """Bring the database to the newest schema; safe to run from several instances at once."""
    await sql.migrate(engine, MIGRATIONS, _PG_LOCK_ID)
