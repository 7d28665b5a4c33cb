"""A circuit breaker on an injected monotonic clock, for asyncio callers (ADR 0023)."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    """Closed lets calls through; open refuses them; half-open lets one trial through."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after `failure_threshold` failures in a row; after `reset_seconds` one trial
    call is let through (half-open): its success closes the circuit, its failure reopens it.

    Single event loop, no awaits inside: the state changes are atomic without a lock.
    """

    def __init__(
        self, failure_threshold: int, reset_seconds: float, monotonic: Callable[[], float]
    ) -> None:
        if failure_threshold < 1 or reset_seconds <= 0:
            raise ValueError("a breaker needs a threshold >= 1 and a positive reset time")
        self._threshold, self._reset, self._now = failure_threshold, reset_seconds, monotonic
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False  # a half-open trial call is in flight

    @property
    def state(self) -> BreakerState:
        """The state now (an open circuit whose reset time passed is half-open)."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._now() - self._opened_at >= self._reset:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """Whether a call may go out now; a half-open circuit lets exactly one through."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial:
            self._trial = True
            return True
        return False

    def succeeded(self) -> None:
        """A call went well: the circuit closes."""
        self._failures, self._opened_at, self._trial = 0, None, False

    def abandoned(self, trial: bool) -> None:
        """A call ended without saying anything about the provider (its caller went away).

        Neither a success nor a failure: the count of failures in a row stays. If it was the
        half-open trial (`trial`: the circuit was half-open when `allow()` let it through),
        the next call may try instead; otherwise nothing changes.
        """
        if trial and self._opened_at is not None:
            self._trial = False

    def failed(self) -> None:
        """A call failed: count it; a failed trial (or the threshold) opens the circuit."""
        self._failures += 1
        if self._trial or self._failures >= self._threshold:
            self._opened_at, self._trial = self._now(), False
