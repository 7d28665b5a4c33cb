"""`leaky auth grant-role|revoke-role`: operator commands on an existing auth database only."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leaky_tokens.auth.domain import roles
from leaky_tokens.auth.domain.audit import AUDIT_LOGGER, OPERATOR, LoggingAuditTrail
from leaky_tokens.runtime import paths as paths_mod
from leaky_tokens.runtime import settings as settings_mod
from leaky_tokens.runtime.errors import DomainError
from leaky_tokens.runtime.logging import JsonFormatter
from leaky_tokens.runtime.paths import PathSettings

if TYPE_CHECKING:  # the SQL and service modules load only when a command runs: fast --help
    from leaky_tokens.auth.adapters.sql_auth_store import SqlAuthStore
    from leaky_tokens.auth.bootstrap import AuthSettings

WHERE = (
    "set LEAKY_AUTH_DATABASE_URL to the auth service's database, or LEAKY_DATA_DIR to the "
    "data directory it runs with (default ./data, relative to the current directory)"
)


class DatabaseError(Exception):
    """The auth database is missing or is not an auth database; the message says what to do."""


def add_commands(auth_sub: argparse._SubParsersAction[Any]) -> None:
    """Register the role subcommands under `leaky auth`."""
    for name, func, text in (
        ("grant-role", grant_role, "give a user a role, e.g. the first ADMIN"),
        ("revoke-role", revoke_role, "take a role from a user"),
    ):
        command = auth_sub.add_parser(
            name,
            help=text,
            description=f"{text[0].upper()}{text[1:]}. Uses the database of the LEAKY_AUTH_* "
            "settings and never creates one.",
        )
        command.add_argument("--username", required=True, help="case-insensitive")
        command.add_argument("--role", default="ADMIN", choices=list(roles.ROLES), help="the role")
        command.set_defaults(func=func)


def grant_role(args: argparse.Namespace) -> int:
    """`leaky auth grant-role`; returns the exit code."""
    return asyncio.run(_change_role(args.username, args.role, grant=True))


def revoke_role(args: argparse.Namespace) -> int:
    """`leaky auth revoke-role`; returns the exit code."""
    return asyncio.run(_change_role(args.username, args.role, grant=False))


def database_url(settings: AuthSettings, paths: PathSettings | None = None) -> str:
    """The URL the auth service would use with these settings (same default as bootstrap)."""
    if settings.database_url:
        return settings.database_url
    if paths is None:
        paths = settings_mod.load(PathSettings, paths_mod.ENV_PREFIX)
    # As runtime.paths.data_dir() resolves it, minus creating the directory.
    path = paths.data_dir.resolve() / "auth.db"
    return f"sqlite+aiosqlite:///{path}"


def describe(url: str) -> str:
    """The database for people: a SQLite file path, or the URL without its password."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite file {Path(parsed.database or '').resolve()}"
    return parsed.render_as_string(hide_password=True)


async def open_existing(url: str) -> SqlAuthStore:
    """A store on the database at `url`; DatabaseError if it is missing or has no schema."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from leaky_tokens.auth.adapters.sql_auth_store import SqlAuthStore, make_engine

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        # Checked first: opening a missing SQLite file would create an empty one.
        database = parsed.database or ""
        exists = await asyncio.to_thread(Path(database).is_file) if database else False
        if database == ":memory:" or not exists:
            raise DatabaseError(f"no auth database at {describe(url)}; {WHERE}")
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
    except (SQLAlchemyError, OSError) as error:
        await engine.dispose()
        cause = str(getattr(error, "orig", error)).strip().splitlines()[0]
        raise DatabaseError(f"cannot open {describe(url)}: {cause}; {WHERE}") from None
    if not {"users", "user_roles", "alembic_version"} <= tables:
        await engine.dispose()
        raise DatabaseError(
            f"{describe(url)} has no auth schema (is it the auth service's database? the "
            f"service creates it on its first start); {WHERE}"
        )
    return SqlAuthStore(engine)


async def _change_role(username: str, role: str, *, grant: bool) -> int:
    from leaky_tokens.auth.bootstrap import ENV_PREFIX, AuthSettings

    settings = settings_mod.load(AuthSettings, ENV_PREFIX)
    url = database_url(settings)
    print(f"auth database: {describe(url)}")
    try:
        store = await open_existing(url)
    except DatabaseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    # The change's audit line goes to stderr as JSON, like the service's own audit lines.
    audit_log = logging.getLogger(AUDIT_LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter("auth-cli"))
    audit_log.addHandler(handler)
    audit_log.setLevel(logging.INFO)
    change = roles.grant_role if grant else roles.revoke_role
    try:
        user = await change(store, LoggingAuditTrail(audit_log), username, role, OPERATOR)
    except DomainError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    finally:
        audit_log.removeHandler(handler)
        await store.close()
    held = ", ".join(sorted(user.roles)) or "none"
    print(f"{user.username} ({user.id}) now has roles: {held}")
    print(
        "Tokens issued from now on carry the change: log in again."
        if grant
        else "Tokens issued before keep the role until they expire (LEAKY_AUTH_TOKEN_TTL_SECONDS)."
    )
    return 0
