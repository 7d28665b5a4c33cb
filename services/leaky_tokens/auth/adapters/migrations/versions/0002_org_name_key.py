"""Organization names unique case-insensitively (name_key); index owners for the org cap.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add name_key = casefold(name), refusing to continue if existing names clash."""
    with op.batch_alter_table("organizations") as batch:
        batch.add_column(sa.Column("name_key", sa.String(400), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, name FROM organizations")).all()
    by_key: dict[str, list[str]] = {}
    for _, name in rows:
        by_key.setdefault(name.casefold(), []).append(name)
    clashes = sorted(", ".join(sorted(names)) for names in by_key.values() if len(names) > 1)
    if clashes:
        raise RuntimeError(
            "organization names that differ only in case must be renamed before this "
            f"migration: {'; '.join(clashes)}"
        )
    for org_id, name in rows:
        conn.execute(
            sa.text("UPDATE organizations SET name_key = :key WHERE id = :id"),
            {"key": name.casefold(), "id": org_id},
        )
    with op.batch_alter_table("organizations") as batch:
        batch.alter_column("name_key", existing_type=sa.String(400), nullable=False)
        batch.drop_constraint("uq_organizations_name", type_="unique")
        batch.create_unique_constraint("uq_organizations_name_key", ["name_key"])
        batch.create_index("ix_organizations_owner_id", ["owner_id"])


def downgrade() -> None:
    """Back to exact-name uniqueness."""
    with op.batch_alter_table("organizations") as batch:
        batch.drop_index("ix_organizations_owner_id")
        batch.drop_constraint("uq_organizations_name_key", type_="unique")
        batch.create_unique_constraint("uq_organizations_name", ["name"])
        batch.drop_column("name_key")
