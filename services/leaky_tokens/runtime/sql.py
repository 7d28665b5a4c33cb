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
from sqlalchemy.ext.asyncio import AsyncEngine

from leaky_tokens.runtime.errors import UnavailableError

T = TypeVar("T")


def unavailable_on_outage(database: str) -> Callable[[type[T]], type[T]]:
    """A class decorator: lost connections and outages of `database` become UnavailableError
    in every public coroutine method (the caller may retry)."""

    def wrap(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return await method(*args, **kwargs)
            except (OperationalError, InterfaceError) as exc:
                raise UnavailableError(
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
