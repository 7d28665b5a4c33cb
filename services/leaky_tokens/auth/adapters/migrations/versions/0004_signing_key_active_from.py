"""Signing keys get active_from: a rotated key is published before it signs (ADR 0049).

Revision ID: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from leaky_tokens.auth.adapters.schema import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add active_from; every existing key was current from its creation."""
    with op.batch_alter_table("signing_keys") as batch:
        batch.add_column(sa.Column("active_from", UtcDateTime(), nullable=True))
    op.execute("UPDATE signing_keys SET active_from = created_at")
    with op.batch_alter_table("signing_keys") as batch:
        batch.alter_column("active_from", existing_type=UtcDateTime(), nullable=False)


def downgrade() -> None:
    """Keys sign from creation again (a pending key becomes current at once)."""
    with op.batch_alter_table("signing_keys") as batch:
        batch.drop_column("active_from")
