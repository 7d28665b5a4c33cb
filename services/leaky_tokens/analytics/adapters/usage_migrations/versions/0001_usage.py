"""Embedded analytics: raw usage, rollups, purchases, source positions, dead letters.

Revision ID: 0001
"""

from __future__ import annotations

from alembic import op

from leaky_tokens.analytics.adapters.usage_schema import metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_INDEXES = (
    ("ix_usage_raw_provider_time", "usage_raw", ["provider", "occurred_at_ms", "event_id"]),
    ("ix_usage_raw_user_time", "usage_raw", ["user_id", "provider", "occurred_at_ms", "event_id"]),
    ("ix_usage_raw_org_time", "usage_raw", ["org_id", "provider", "occurred_at_ms", "event_id"]),
    ("ix_usage_raw_expires", "usage_raw", ["expires_at_ms"]),
    ("ix_purchase_views_created", "purchase_views", ["created_at_ms", "saga_id"]),
    ("ix_purchase_views_user", "purchase_views", ["user_id", "created_at_ms", "saga_id"]),
    ("ix_purchase_views_org", "purchase_views", ["org_id", "created_at_ms", "saga_id"]),
)


def upgrade() -> None:
    """Create the tables (as usage_schema declares them) and their indexes."""
    metadata.create_all(op.get_bind())
    for name, table, columns in _INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    """Drop them."""
    metadata.drop_all(op.get_bind())
