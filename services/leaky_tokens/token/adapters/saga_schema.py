"""SQLAlchemy tables of the token database: purchase sagas, their steps done, the outbox."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData()
# An autoincrementing 64-bit key on PostgreSQL; SQLite autoincrements INTEGER keys only.
BigSerial = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        aware: datetime = value.replace(tzinfo=UTC) if value.tzinfo is None else value
        return aware.astimezone(UTC)


purchases = sa.Table(
    "purchases",
    metadata,
    # seq orders a user's purchases (newest first) and is the list's page cursor.
    sa.Column("seq", BigSerial, primary_key=True, autoincrement=True),
    sa.Column("saga_id", sa.String(36), nullable=False),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("org_id", sa.String(128), nullable=True),
    sa.Column("provider", sa.String(100), nullable=False),
    sa.Column("tokens", sa.BigInteger(), nullable=False),
    sa.Column("idempotency_key", sa.String(100), nullable=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("failure_reason", sa.String(300), nullable=False, server_default=""),
    sa.Column("payment_id", sa.String(100), nullable=False, server_default=""),
    sa.Column("payment_state", sa.String(20), nullable=False),
    sa.Column("allocation_state", sa.String(20), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("saga_id", name="uq_purchases_saga_id"),
    # Per user: two concurrent starts with one key cannot both insert (NULL keys never clash).
    sa.UniqueConstraint("user_id", "idempotency_key", name="uq_purchases_user_key"),
    sa.Index("ix_purchases_user_seq", "user_id", "seq"),
    sa.Index("ix_purchases_status_updated", "status", "updated_at"),
)

# One row per step done on a saga: a redelivered event finds its step here and does nothing.
purchase_steps = sa.Table(
    "purchase_steps",
    metadata,
    sa.Column("saga_id", sa.String(36), primary_key=True),
    sa.Column("step", sa.String(40), primary_key=True),
    sa.Column("cause", sa.String(100), nullable=False),
    sa.Column("done_at", UtcDateTime(), nullable=False),
)

# Events recorded in a step's transaction, deleted once the bus confirmed them.
purchase_outbox = sa.Table(
    "purchase_outbox",
    metadata,
    sa.Column("seq", BigSerial, primary_key=True, autoincrement=True),
    sa.Column("topic", sa.String(200), nullable=False),
    sa.Column("envelope", sa.LargeBinary(), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
)
