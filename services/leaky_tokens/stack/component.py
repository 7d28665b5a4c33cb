"""What every stack component provides, and the paths they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from leaky_tokens.loopback import HOST
from leaky_tokens.stack.settings import StackSettings, load_stack_settings

__all__ = ["HOST", "Component", "ComponentError", "Launch", "StackPaths"]


@dataclass(frozen=True)
class StackPaths:
    """Where state and caches live.

    `root` is project-local and git-ignored (`.leaky/stack`): data, logs, pid files.
    `cache` is outside the clone (`~/.cache/leaky-tokens`): downloaded jars, built binaries,
    so a fresh clone's `up` reuses them.
    """

    root: Path
    cache: Path

    @classmethod
    def default(cls, settings: StackSettings | None = None) -> StackPaths:
        """The paths the settings (by default: the environment's) name."""
        config = settings if settings is not None else load_stack_settings()
        return cls(config.root(), config.cache())

    def data(self, name: str) -> Path:
        """The component's data directory (created)."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log(self, name: str) -> Path:
        """The component's log file."""
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        return self.root / "logs" / f"{name}.log"

    def pidfile(self, name: str) -> Path:
        """Where the component's PID (and process start time) is recorded."""
        (self.root / "run").mkdir(parents=True, exist_ok=True)
        return self.root / "run" / f"{name}.pid"

    def cached(self, *parts: str) -> Path:
        """A path under the download/build cache (parent created)."""
        path = self.cache.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(frozen=True)
class Launch:
    """How to start a component's long-running process (in the foreground, no daemonizing)."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to os.environ
    cwd: Path | None = None
    user: str | None = None  # run as this user (PostgreSQL refuses root)


class ComponentError(RuntimeError):
    """A component could not be provisioned, prepared or started."""


class Component(ABC):
    """One server of the stack. Every method is idempotent."""

    name: str
    startup_timeout: float = 60.0

    @property
    @abstractmethod
    def address(self) -> str:
        """host:port clients use (shown by `status`)."""

    def provision(self, paths: StackPaths) -> None:  # noqa: B027 (optional hook)
        """Download or build what the component needs into `paths.cache` (cached)."""

    def prepare(self, paths: StackPaths) -> None:  # noqa: B027 (optional hook)
        """Initialise the data directory and config files, if not done yet."""

    @abstractmethod
    def launch(self, paths: StackPaths) -> Launch:
        """The command that runs the server in the foreground."""

    @abstractmethod
    def ready(self, paths: StackPaths) -> bool:
        """A quick probe (bounded to ~1 s): True once the server answers for real."""

    def after_ready(self, paths: StackPaths) -> None:  # noqa: B027 (optional hook)
        """One-time setup that needs the server up (databases, keyspaces); idempotent."""
