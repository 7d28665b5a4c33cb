"""Ports of the purchase saga: its store (saga rows, steps done, the outbox) and the payment."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from leaky_tokens.token.domain.saga import Outcome, Purchase, SagaEvent, Step

# A step's decision on the locked saga: its next state and events, or None (does not apply).
Decide = Callable[[Purchase], Awaitable[tuple[Purchase, list[SagaEvent]] | None]]


@dataclass(frozen=True, slots=True)
class Page:
    """One page of purchases, newest first; `next_cursor` 0 on the last page."""

    purchases: Sequence[Purchase]
    next_cursor: int


class SagaStore(Protocol):
    """Saga rows, the steps done on them and the outbox, changed together or not at all."""

    async def start(self, purchase: Purchase, first: SagaEvent) -> Purchase:
        """Insert the saga and its first event in one transaction.

        When the purchase's (user, idempotency key) is taken, nothing is inserted and the saga
        holding it is returned: the caller compares the requests (a unique constraint decides
        concurrent starts, not a read before the write).
        """

    async def get(self, saga_id: str) -> Purchase | None:
        """The saga, or None."""

    async def list_for(self, user_id: str, limit: int, before: int) -> Page:
        """The user's sagas, newest first; `before` is a cursor from an earlier page (0: first)."""

    async def run_step(self, saga_id: str, step: Step, decide: Decide) -> Purchase | None:
        """In one transaction: lock the saga; unless `step` was done on it, call `decide`; when
        it returns a state, store it, record the step done and add its events to the outbox.

        Returns the new state, or None when nothing changed (no such saga, step done before,
        or `decide` declined). An exception rolls everything back.
        """

    async def stuck(self, updated_before: datetime, limit: int) -> Sequence[str]:
        """Ids of sagas not terminal and unchanged since `updated_before`, oldest first."""


class PaymentGateway(Protocol):
    """Reserves, captures and releases the payment of a purchase; every call is idempotent
    by saga id (a repeat answers as the first did), so a redelivered step charges nothing twice.
    """

    async def reserve(self, purchase: Purchase) -> Outcome:
        """Hold the payment: ok with a payment id, or declined with a reason."""

    async def capture(self, purchase: Purchase) -> Outcome:
        """Charge the held payment: ok, or failed with a reason (the hold then lapses)."""

    async def release(self, purchase: Purchase) -> None:
        """Cancel the hold (nothing charged); also for a saga never reserved: a reserve that
        arrives after it is declined."""
