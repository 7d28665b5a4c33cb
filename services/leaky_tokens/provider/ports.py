"""Ports of the provider stubs: randomness for ids and fault draws, and waiting."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

# Waits this many seconds (asyncio.sleep in production; tests record instead of waiting).
Sleep = Callable[[float], Awaitable[None]]


class StubRandomness(Protocol):
    """Response ids and the draws that decide jitter and injected failures."""

    def new_id(self) -> str:
        """A new UUID string."""

    def uniform(self) -> float:
        """A number in [0, 1)."""
