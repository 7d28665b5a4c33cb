"""Where local state and shipped files live: LEAKY_DATA_DIR, the packaged assets, the checkout."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from leaky_tokens.runtime import settings as settings_mod
from leaky_tokens.runtime.settings import doc

ENV_PREFIX = "LEAKY"

# Files the package ships (package data; symlinks to envoy/ and tools/ in a checkout).
ASSETS = Path(__file__).resolve().parents[1] / "assets"


@dataclass(frozen=True)
class PathSettings:
    """Local state (LEAKY_<FIELD>)."""

    data_dir: Path = field(
        default=Path("data"),
        metadata=doc(
            "State of `leaky up` and of services run by hand: SQLite files, logs, the "
            "rendered Envoy config (relative to the current directory; created owner-only)."
        ),
    )


def descriptor() -> Path:
    """The Envoy descriptor set of the public API (`make gen` writes envoy/leaky.pb)."""
    return (ASSETS / "leaky.pb").resolve()


def tools() -> Path:
    """Build inputs of the stack's third-party servers: Maven poms, the Consul Go module."""
    return (ASSETS / "tools").resolve()


def checkout() -> Path | None:
    """The source checkout this code runs from (editable install), or None when installed."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").is_file() and (root / "services").is_dir() else None


def data_dir(settings: PathSettings | None = None) -> Path:
    """The data directory, created on first use."""
    config = settings if settings is not None else settings_mod.load(PathSettings, ENV_PREFIX)
    path = config.data_dir.resolve()
    # It holds password hashes and signing keys: owner only.
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def sqlite_url(name: str) -> str:
    """An aiosqlite URL for a database file in the data directory."""
    return f"sqlite+aiosqlite:///{data_dir() / name}"
