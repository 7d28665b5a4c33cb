"""Organization name_key becomes NFKC + casefold, so lookalike spellings of a name clash.

Revision ID: 0003
"""

from __future__ import annotations

import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _key(name: str) -> str:
    # Frozen copy of model.name_key as of this revision: a migration must not change meaning
    # when the model's function changes later.
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def upgrade() -> None:
    """Recompute every name_key, refusing to continue if existing names now clash.

    Usernames keep their keys: registration and legacy names are ASCII, where NFKC changes
    nothing.
    """
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, name, name_key FROM organizations")).all()
    by_key: dict[str, list[str]] = {}
    for _, name, _ in rows:
        by_key.setdefault(_key(name), []).append(name)
    # ascii(): the clashing spellings look alike by definition, so show their code points.
    clashes = sorted(", ".join(map(ascii, sorted(n))) for n in by_key.values() if len(n) > 1)
    if clashes:
        raise RuntimeError(
            "organization names that differ only in Unicode normalisation or case must be "
            f"renamed before this migration: {'; '.join(clashes)}"
        )
    for org_id, name, old in rows:
        if _key(name) != old:
            conn.execute(
                sa.text("UPDATE organizations SET name_key = :key WHERE id = :id"),
                {"key": _key(name), "id": org_id},
            )


def downgrade() -> None:
    """Back to casefold() keys."""
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, name FROM organizations")).all()
    for org_id, name in rows:
        conn.execute(
            sa.text("UPDATE organizations SET name_key = :key WHERE id = :id"),
            {"key": name.casefold(), "id": org_id},
        )
