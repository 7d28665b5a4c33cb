"""Purchase saga: purchases, the steps done on them, the outbox.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from leaky_tokens.token.adapters.saga_schema import BigSerial, UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the three tables."""
    op.create_table(
        "purchases",
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
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_purchases_user_key"),
    )
    op.create_index("ix_purchases_user_seq", "purchases", ["user_id", "seq"])
    op.create_index("ix_purchases_status_updated", "purchases", ["status", "updated_at"])
    op.create_table(
        "purchase_steps",
        sa.Column("saga_id", sa.String(36), primary_key=True),
        sa.Column("step", sa.String(40), primary_key=True),
        sa.Column("cause", sa.String(100), nullable=False),
        sa.Column("done_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "purchase_outbox",
        sa.Column("seq", BigSerial, primary_key=True, autoincrement=True),
        sa.Column("topic", sa.String(200), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    """Drop them."""
    op.drop_table("purchase_outbox")
    op.drop_table("purchase_steps")
    op.drop_table("purchases")
