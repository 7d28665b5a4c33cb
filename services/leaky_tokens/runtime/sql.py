"""What every SQL-backed service shares: outages as UnavailableError, Alembic upgrades at start."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from leaky_tokens.runtime.errors import UnavailableError
from leaky_tokens.runtime.sqlite_wal import enable_wal

T = TypeVar("T")
# Execution option of a connection that only reads: SQLite runs it without a write lock.
READ_ONLY = "leaky_read_only"


def make_engine(url: str) -> AsyncEngine:
    """An async engine. On SQLite (WAL) every transaction starts BEGIN IMMEDIATE: one that
    reads then writes would otherwise fail another doing the same instead of waiting (the busy
    timeout) for it. Connections marked READ_ONLY take no lock (each statement on its own,
    which WAL lets run beside a writer)."""
    if not url.startswith("sqlite"):
        return create_async_engine(url, pool_pre_ping=True, pool_size=10, hide_parameters=True)
    engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver's own BEGIN off: ours below
        enable_wal(dbapi_conn)

    @sa.event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        if not conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def unavailable_on_outage(
    database: str, error: type[UnavailableError] = UnavailableError
) -> Callable[[type[T]], type[T]]:
    """A class decorator: lost connections and outages of `database` become `error` (an
    UnavailableError) in every public coroutine method (the caller may retry)."""

    def wrap(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return await method(*args, **kwargs)
            except (OperationalError, InterfaceError) as exc:
                raise error(
                    f"the {database} database is unavailable", reason="DATABASE_UNAVAILABLE"
                ) from exc

        return guarded

    def decorate(cls: type[T]) -> type[T]:
        for name, member in list(vars(cls).items()):
            if inspect.iscoroutinefunction(member) and not name.startswith("_"):
                setattr(cls, name, wrap(member))
        return cls

    return decorate


async def migrate(engine: AsyncEngine, migrations: Path, pg_lock_id: int) -> None:
    """Bring the database to the newest schema of `migrations` (an Alembic script directory);
    safe from several instances at once: on PostgreSQL an advisory lock serialises them."""

    def upgrade(connection: sa.Connection) -> None:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": pg_lock_id})
        config = Config()
        config.set_main_option("script_location", str(migrations))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async with engine.begin() as conn:
        await conn.run_sync(upgrade)
