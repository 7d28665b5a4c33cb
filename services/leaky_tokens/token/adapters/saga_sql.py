"""The token database's engine and migrations (SQLite in embedded mode, PostgreSQL in the stack)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from leaky_tokens.runtime import sql

MIGRATIONS = Path(__file__).with_name("saga_migrations")
# Any fixed number works; it serialises concurrent migrators on one PostgreSQL database.
_PG_LOCK_ID = 0x70CE_5A6A
# Execution option of a connection that only reads: SQLite runs it without a write lock.
READ_ONLY = "leaky_read_only"


def make_engine(url: str) -> AsyncEngine:
    """An async engine. On SQLite every transaction starts BEGIN IMMEDIATE: a saga step reads
    then writes, and two deferred transactions doing that would fail each other instead of
    one waiting (the busy timeout) for the other. Connections marked READ_ONLY take no lock
    (each statement on its own, which WAL lets run beside a writer)."""
    if not url.startswith("sqlite"):
        return create_async_engine(url, pool_pre_ping=True, pool_size=10, hide_parameters=True)
    engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver's own BEGIN off: ours below
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        if not conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


async def migrate(engine: AsyncEngine) -> None:
    """Bring the database to the newest schema; safe to run from several instances at once."""
    await sql.migrate(engine, MIGRATIONS, _PG_LOCK_ID)
