"""SQLAlchemy tables of the embedded analytics database (SQLite): raw usage events, rollups,
purchases, the source positions projected up to, and the dead letters."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()


def _scope() -> tuple[sa.Column[object], ...]:
    """The key of a rollup row: whose (scope), which provider, which bucket."""
    return (
        sa.Column("scope_kind", sa.String(8), primary_key=True),
        sa.Column("scope_id", sa.String(128), primary_key=True),
        sa.Column("provider", sa.String(100), primary_key=True),
        sa.Column("resolution_ms", sa.BigInteger(), primary_key=True),
        sa.Column("bucket_ms", sa.BigInteger(), primary_key=True),
    )


# One row per usage event id (the de-duplication key); deleted once `expires_at_ms` passed.
usage_raw = sa.Table(
    "usage_raw",
    metadata,
    sa.Column("event_id", sa.String(100), primary_key=True),
    sa.Column("occurred_at_ms", sa.BigInteger(), nullable=False),
    sa.Column("kind", sa.String(10), nullable=False),
    sa.Column("decision", sa.Boolean(), nullable=False),
    sa.Column("provider", sa.String(100), nullable=False),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("org_id", sa.String(128), nullable=False),
    sa.Column("tokens", sa.BigInteger(), nullable=False),
    sa.Column("allowed", sa.Boolean(), nullable=False),
    sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
)

# Totals of one bucket of one scope and provider (Totals without its users).
usage_rollups = sa.Table(
    "usage_rollups",
    metadata,
    *_scope(),
    sa.Column("events", sa.BigInteger(), nullable=False),
    sa.Column("allowed_events", sa.BigInteger(), nullable=False),
    sa.Column("tokens", sa.BigInteger(), nullable=False),
    sa.Column("allowed_tokens", sa.BigInteger(), nullable=False),
    sa.Column("refunded_tokens", sa.BigInteger(), nullable=False),
)

# Each user's share of a bucket (Totals.users).
usage_rollup_users = sa.Table(
    "usage_rollup_users",
    metadata,
    *_scope(),
    sa.Column("user_id", sa.String(128), primary_key=True),
    sa.Column("tokens", sa.BigInteger(), nullable=False),
    sa.Column("events", sa.BigInteger(), nullable=False),
)

# A purchase's latest state; `state_at_ms`/`state_event_id` order its steps.
purchase_views = sa.Table(
    "purchase_views",
    metadata,
    sa.Column("saga_id", sa.String(100), primary_key=True),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("org_id", sa.String(128), nullable=False),
    sa.Column("provider", sa.String(100), nullable=False),
    sa.Column("tokens", sa.BigInteger(), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("reason", sa.String(300), nullable=False),
    sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
    sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
    sa.Column("state_event_id", sa.String(100), nullable=False),
)

# (topic, partition) -> the highest offset projected, committed with what it projected.
source_positions = sa.Table(
    "source_positions",
    metadata,
    sa.Column("topic", sa.String(200), primary_key=True),
    sa.Column("partition", sa.Integer(), primary_key=True),
    sa.Column("offset", sa.BigInteger(), nullable=False),
)

# Messages that can never be projected, with why.
dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("topic", sa.String(200), nullable=False),
    sa.Column("partition", sa.Integer(), nullable=False),
    sa.Column("offset", sa.BigInteger(), nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("value", sa.LargeBinary(), nullable=False),
    sa.Column("recorded_at_ms", sa.BigInteger(), nullable=False),
    sa.UniqueConstraint("topic", "partition", "offset", name="uq_dead_letters_position"),
)
