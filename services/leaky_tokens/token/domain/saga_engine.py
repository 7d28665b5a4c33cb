"""The saga's participant steps and its recovery: effect through a port, then the transition.

Every step runs inside the store's transaction on the locked saga row: the guard is checked
on the row as it is now, the effect (payment, balance) is idempotent by saga id, and the new
state, the step's record and its event commit together. A redelivered event therefore finds
its step done (or moot) and changes nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from leaky_tokens.runtime.ports import Clock
from leaky_tokens.token.domain import saga
from leaky_tokens.token.domain.decision import Level
from leaky_tokens.token.domain.peers import PolicySource
from leaky_tokens.token.domain.ports import DecisionStore, Subject
from leaky_tokens.token.domain.saga import (
    AllocationState,
    EventType,
    Outcome,
    Purchase,
    SagaEvent,
    Step,
)
from leaky_tokens.token.domain.saga_ports import PaymentGateway, SagaStore
from leaky_tokens.token.domain.units import to_ms

log = logging.getLogger(__name__)
RECOVERY = "recovery"  # the causation of a step recovery ran (no event caused it)


def grant_id(saga_id: str) -> str:
    """The balance credit of a purchase: its own namespace, never an ADMIN grant's key."""
    return f"purchase:{saga_id}"


def subject_of(p: Purchase) -> tuple[Subject, Level]:
    """Whose balance a purchase credits: the org's quota level, else the user's."""
    level = Level.ORG_QUOTA if p.org_id else Level.USER_QUOTA
    return Subject(p.user_id, p.provider, p.org_id), level


class SagaEngine:
    """Runs one step of one saga: what each participant does with the events it reacts to."""

    def __init__(
        self,
        store: SagaStore,
        payment: PaymentGateway,
        balances: DecisionStore,
        policy: PolicySource,
        clock: Clock,
    ) -> None:
        self._store, self._payment, self._balances = store, payment, balances
        self._policy, self._clock = policy, clock

    async def react(self, participant: str, event: EventType, saga_id: str, cause: str) -> bool:
        """The participant's step for this event, if it reacts to it; whether anything changed."""
        step = saga.REACTIONS[participant].get(event)
        if step is None:
            return False
        return await self.run(step, saga_id, cause)

    async def run(
        self, step: Step, saga_id: str, cause: str, *, stale_before: datetime | None = None
    ) -> bool:
        """Run `step` on the saga if it applies now; whether it did.

        With `stale_before` (recovery), it applies only to a saga still unchanged since then,
        seen as timed out (compensated rather than pushed on before allocation).
        """
        timed_out = stale_before is not None

        async def decide(p: Purchase) -> tuple[Purchase, list[SagaEvent]] | None:
            if stale_before is not None and p.updated_at > stale_before:
                return None  # it moved on since recovery looked: not stuck after all
            if not saga.guard(step, p, timed_out=timed_out):
                return None
            outcome = await self._effect(step, p, timed_out)
            return saga.apply(step, p, outcome, self._clock.now(), cause, timed_out=timed_out)

        return await self._store.run_step(saga_id, step, decide) is not None

    async def recover(self, stale_after: timedelta, limit: int) -> int:
        """Move up to `limit` sagas unchanged for `stale_after` one step on; how many moved.

        STARTED and PAYMENT_RESERVED are compensated (payment released, then FAILED "timed
        out"); TOKENS_ALLOCATED is captured and completed; a saga whose next step is the
        keeper's gets it. Each step goes through the outbox like any other.
        """
        cutoff = self._clock.now() - stale_after
        moved = 0
        for saga_id in await self._store.stuck(cutoff, limit):
            p = await self._store.get(saga_id)
            step = None if p is None else saga.pending_step(p, timed_out=True)
            if step is None:
                continue
            try:
                if await self.run(step, saga_id, RECOVERY, stale_before=cutoff):
                    moved += 1
            except Exception:  # one saga's failure must not stop the others' recovery
                log.exception("saga recovery: %s on %s failed", step, saga_id)
        return moved

    async def _effect(self, step: Step, p: Purchase, timed_out: bool) -> Outcome:
        if step is Step.RESERVE_PAYMENT:
            return await self._payment.reserve(p)
        if step is Step.CAPTURE_PAYMENT:
            return await self._payment.capture(p)
        if step is Step.RELEASE_PAYMENT:
            await self._payment.release(p)
            if timed_out and p.allocation is AllocationState.NONE:
                # A credit whose step died before its commit is taken back; one that never
                # happened is barred (the store remembers the revert), so none lands late.
                await self._revert(p, saga.TIMED_OUT)
            return Outcome(ok=True)
        if step is Step.ALLOCATE:
            return await self._allocate(p)
        if step is Step.REVERT_ALLOCATION:
            return Outcome(ok=True, tokens=await self._revert(p, p.failure_reason))
        return Outcome(ok=True)  # the keeper's steps only record the state

    async def _allocate(self, p: Purchase) -> Outcome:
        if p.provider not in self._policy.current.providers:
            return Outcome(ok=False, reason=f"provider {p.provider!r} is no longer offered")
        subject, level = subject_of(p)
        now_ms = to_ms(self._clock.now())
        try:
            await self._balances.credit_balance(
                subject, level, p.tokens, grant_id(p.saga_id), now_ms, reason="purchase"
            )
        except ValueError as error:  # the balance would pass what the store can count
            return Outcome(ok=False, reason=str(error))
        return Outcome(ok=True)

    async def _revert(self, p: Purchase, reason: str) -> int:
        subject, level = subject_of(p)
        now_ms = to_ms(self._clock.now())
        done = await self._balances.revert_credit(
            subject, level, grant_id(p.saga_id), now_ms, reason or "purchase failed"
        )
        return done.reverted
