"""SQLAlchemy table definitions of the auth database (migrations create them)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData()


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return (
            value.astimezone(UTC)
            if dialect.name != "sqlite"
            else value.astimezone(UTC).replace(tzinfo=None)
        )

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        aware: datetime = value.replace(tzinfo=UTC) if value.tzinfo is None else value
        return aware.astimezone(UTC)


users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("username", sa.String(50), nullable=False),
    sa.Column("username_key", sa.String(50), nullable=False),
    sa.Column("email", sa.String(100), nullable=False),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("username_key", name="uq_users_username_key"),
    sa.UniqueConstraint("email", name="uq_users_email"),
)

roles = sa.Table(
    "roles",
    metadata,
    sa.Column("name", sa.String(50), primary_key=True),
    sa.Column("description", sa.Text(), nullable=False, server_default=""),
)

user_roles = sa.Table(
    "user_roles",
    metadata,
    sa.Column(
        "user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("role", sa.String(50), sa.ForeignKey("roles.name"), primary_key=True),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column(
        "user_id",
        sa.String(36),
        sa.ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("name", sa.String(100), nullable=False, server_default=""),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("expires_at", UtcDateTime(), nullable=True),
    sa.Column("revoked_at", UtcDateTime(), nullable=True),
)

organizations = sa.Table(
    "organizations",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    # name_key(name), computed in Python: unique, so names clash case-insensitively, and
    # the listing order (code point order of the key) is the same on every backend.
    sa.Column("name_key", sa.String(400), nullable=False),
    sa.Column("owner_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("name_key", name="uq_organizations_name_key"),
)

org_members = sa.Table(
    "org_members",
    metadata,
    sa.Column(
        "org_id",
        sa.String(36),
        sa.ForeignKey("organizations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column(
        "user_id",
        sa.String(36),
        sa.ForeignKey("users.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("joined_at", UtcDateTime(), nullable=False),
)

signing_keys = sa.Table(
    "signing_keys",
    metadata,
    # Rotation order: the highest seq is the current key, whatever the clocks say.
    sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("kid", sa.String(64), nullable=False, unique=True),
    sa.Column("private_pem", sa.LargeBinary(), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    # Published from created_at, signing from active_from (ADR 0049: pre-published rotation).
    sa.Column("active_from", UtcDateTime(), nullable=False),
)
