"""SQLAlchemy engines for the auth store, and how their errors become domain errors."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from leaky_tokens.auth.domain.ports import DuplicateError
from leaky_tokens.runtime import sql
from leaky_tokens.runtime.sqlite_wal import enable_wal


def make_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite gets foreign keys on and a busy timeout for concurrent writers.

    Bound parameters are hidden from error messages: they hold password and key hashes.
    """
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
            enable_wal(dbapi_conn)

        return engine
    return create_async_engine(url, pool_pre_ping=True, pool_size=10, hide_parameters=True)


# Unique constraints by name (PostgreSQL) or by column list (SQLite's message), never by
# searching the error text, which on PostgreSQL also quotes the clashing value.
_DUPLICATES = {
    "uq_users_username_key": "username",
    "users.username_key": "username",
    "uq_users_email": "email",
    "users.email": "email",
    "uq_organizations_name_key": "name",
    "organizations.name_key": "name",
    "org_members_pkey": "member",
    "org_members.org_id, org_members.user_id": "member",
}


def as_duplicate(error: IntegrityError) -> DuplicateError:
    """The DuplicateError a unique violation means; anything else is re-raised as is."""
    diag = getattr(error.orig, "diag", None)
    constraint = getattr(diag, "constraint_name", None)
    if constraint is None:
        message = str(error.orig)
        constraint = (
            message.split("UNIQUE constraint failed: ", 1)[-1] if "UNIQUE" in message else ""
        )
    field = _DUPLICATES.get(constraint)
    if field is None:
        raise error
    return DuplicateError(field)


unavailable_on_outage = sql.unavailable_on_outage("auth")
