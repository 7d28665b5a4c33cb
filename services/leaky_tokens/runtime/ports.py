"""Ports every service's domain may need: time and randomness."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class Clock(Protocol):
    """The current time (UTC, timezone-aware)."""

    def now(self) -> datetime:
        """Now."""


class Randomness(Protocol):
    """Ids and secrets."""

    def new_id(self) -> str:
        """A new random UUID string."""

    def secret(self, nbytes: int) -> str:
        """A URL-safe string carrying `nbytes` random bytes."""
