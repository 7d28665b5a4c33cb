"""When a failed call is tried again, and how long to wait first.

Only idempotent calls are retried (the client says which, per call): reads always, Consume,
Reserve and Purchase only with an idempotency key (the server then answers a repeat with the
first answer, ADR 0031), Settle and Release always (idempotent by contract). A retry happens
only for UNAVAILABLE, never for PROVIDER_UNAVAILABLE (the token service already retried the
provider and refunded every debit: the caller decides), and never for any other code:
RESOURCE_EXHAUSTED is a decision, not a failure. The wait is exponential backoff with full
jitter, or the server's RetryInfo when it sent one (IDEMPOTENCY_KEY_IN_FLIGHT), and never
past the call's deadline, which covers every attempt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta

import grpc

from leaky_tokens.client.errors import LeakyError

NOT_RETRIED_REASONS = frozenset({"PROVIDER_UNAVAILABLE"})


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts and backoff for idempotent calls; `RetryPolicy(max_attempts=1)` disables."""

    max_attempts: int = 4
    """Attempts in all, the first included."""
    initial_backoff: timedelta = timedelta(milliseconds=100)
    max_backoff: timedelta = timedelta(seconds=2)
    multiplier: float = 2.0
    random: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff <= timedelta(0) or self.max_backoff < self.initial_backoff:
            raise ValueError("backoff must be positive and max_backoff >= initial_backoff")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")

    def retryable(self, error: LeakyError) -> bool:
        """Whether this failure of an idempotent call may be tried again."""
        return error.code is grpc.StatusCode.UNAVAILABLE and error.reason not in NOT_RETRIED_REASONS

    def backoff(self, retry: int, error: LeakyError) -> timedelta:
        """The wait before retry number `retry` (1 for the first retry): the server's
        RetryInfo when it sent one, else a uniformly random share of the capped exponential."""
        if error.retry_after is not None and error.retry_after > timedelta(0):
            return error.retry_after
        ceiling = min(self.initial_backoff * self.multiplier ** (retry - 1), self.max_backoff)
        return ceiling * self.random.random()
