"""Ports every service's domain may need: time, randomness and org membership."""

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


class Membership(Protocol):
    """Whether a user is a member of an organization now, as the auth service knows it."""

    async def org_ids(self, user_id: str, credential: str) -> frozenset[str]:
        """The user's organizations, at most a documented bound old (the adapter's cache).

        `credential` is the caller's own bearer token, forwarded so auth answers for that
        caller only.
        """
