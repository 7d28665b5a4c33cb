"""Embedded analytics: raw usage, rollups, purchases, source positions, dead letters.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _scope_key() -> list[sa.Column[object]]:
    return [
        sa.Column("scope_kind", sa.String(8), primary_key=True),
        sa.Column("scope_id", sa.String(128), primary_key=True),
        sa.Column("provider", sa.String(100), primary_key=True),
        sa.Column("resolution_ms", sa.BigInteger(), primary_key=True),
        sa.Column("bucket_ms", sa.BigInteger(), primary_key=True),
    ]


def upgrade() -> None:
    """Create the tables and their indexes."""
    op.create_table(
        "usage_raw",
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
    op.create_index(
        "ix_usage_raw_provider_time", "usage_raw", ["provider", "occurred_at_ms", "event_id"]
    )
    op.create_index(
        "ix_usage_raw_user_time", "usage_raw", ["user_id", "provider", "occurred_at_ms", "event_id"]
    )
    op.create_index(
        "ix_usage_raw_org_time", "usage_raw", ["org_id", "provider", "occurred_at_ms", "event_id"]
    )
    op.create_index("ix_usage_raw_expires", "usage_raw", ["expires_at_ms"])
    op.create_table(
        "usage_rollups",
        *_scope_key(),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("allowed_events", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("allowed_tokens", sa.BigInteger(), nullable=False),
        sa.Column("refunded_tokens", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "usage_rollup_users",
        *_scope_key(),
        sa.Column("user_id", sa.String(128), primary_key=True),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "purchase_views",
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
    op.create_index("ix_purchase_views_created", "purchase_views", ["created_at_ms", "saga_id"])
    op.create_index(
        "ix_purchase_views_user", "purchase_views", ["user_id", "created_at_ms", "saga_id"]
    )
    op.create_index(
        "ix_purchase_views_org", "purchase_views", ["org_id", "created_at_ms", "saga_id"]
    )
    op.create_table(
        "source_positions",
        sa.Column("topic", sa.String(200), primary_key=True),
        sa.Column("partition", sa.Integer(), primary_key=True),
        sa.Column("offset", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("topic", sa.String(200), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("recorded_at_ms", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("topic", "partition", "offset", name="uq_dead_letters_position"),
    )


def downgrade() -> None:
    """Drop them."""
    for table in (
        "dead_letters",
        "source_positions",
        "purchase_views",
        "usage_rollup_users",
        "usage_rollups",
        "usage_raw",
    ):
        op.drop_table(table)
