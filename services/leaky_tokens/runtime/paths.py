"""Where embedded-mode state lives: LEAKY_DATA_DIR, default ./data (git-ignored)."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """The data directory, created on first use."""
    path = Path(os.environ.get("LEAKY_DATA_DIR", "data")).resolve()
    # It holds password hashes and signing keys: owner only.
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def sqlite_url(name: str) -> str:
    """An aiosqlite URL for a database file in the data directory."""
    return f"sqlite+aiosqlite:///{data_dir() / name}"
