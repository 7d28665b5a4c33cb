"""The real clock and randomness (the Clock and Randomness ports of every service)."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime


class SystemClock:
    """UTC wall-clock time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class SystemRandomness:
    """uuid4 ids and secrets from the OS CSPRNG."""

    def new_id(self) -> str:
        return str(uuid.uuid4())

    def secret(self, nbytes: int) -> str:
        return secrets.token_urlsafe(nbytes)
