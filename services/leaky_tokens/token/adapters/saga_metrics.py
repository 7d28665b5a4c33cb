"""The purchase saga's metrics: purchases by outcome, steps done (compensations), recoveries.

Counted where a step commits: `MeteredSagaStore` wraps the store the engine runs its steps
through, so a step counts once however often its event is redelivered (a redelivered step
changes nothing and `run_step` answers None). Whichever process runs the saga exports them:
the token service in embedded mode, the saga worker in the native stack (ADR 0040).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from prometheus_client import Counter
from prometheus_client.registry import Collector

from leaky_tokens.token.adapters.saga_contract import SagaRecovery
from leaky_tokens.token.domain.saga import Purchase, SagaEvent, SagaStatus, Step
from leaky_tokens.token.domain.saga_ports import Decide, Page, SagaStore

# Steps that undo an earlier one (the `compensation` panel sums these).
COMPENSATIONS = (Step.RELEASE_PAYMENT, Step.REVERT_ALLOCATION)
OUTCOMES = {SagaStatus.COMPLETED: "completed", SagaStatus.FAILED: "failed"}


class SagaMetrics:
    """Every saga metric, unregistered: the process running the saga exports `collectors`.

    Every label value is bounded (the Step and outcome enums) and created at 0, so a rate
    over them exists before the first purchase.
    """

    def __init__(self) -> None:
        self.purchases = Counter(
            "leaky_token_purchases",
            "Purchase sagas finished, by outcome (completed: tokens credited and payment "
            "captured; failed: compensated, nothing charged or credited).",
            ["outcome"],
            registry=None,
        )
        self.steps = Counter(
            "leaky_token_saga_steps",
            "Saga participant steps committed, by step (payment.release and "
            "allocation.revert are compensations).",
            ["step"],
            registry=None,
        )
        self.recovered = Counter(
            "leaky_token_saga_recovered",
            "Sagas moved on by recovery after their timeout (finished or compensated).",
            registry=None,
        )
        self._outcomes = {status: self.purchases.labels(o) for status, o in OUTCOMES.items()}
        self._steps = {step: self.steps.labels(step.value) for step in Step}

    def step_done(self, step: Step, after: Purchase) -> None:
        """Count a committed step, and the purchase's outcome when it ended the saga."""
        self._steps[step].inc()
        finished = self._outcomes.get(after.status)
        if finished is not None:
            finished.inc()

    @property
    def collectors(self) -> tuple[Collector, ...]:
        """What a registry exports."""
        return (self.purchases, self.steps, self.recovered)


class MeteredSagaStore:
    """A SagaStore that counts every step it commits (the rest passes through)."""

    def __init__(self, inner: SagaStore, metrics: SagaMetrics) -> None:
        self._inner, self._metrics = inner, metrics

    async def start(self, purchase: Purchase, first: SagaEvent) -> Purchase:
        return await self._inner.start(purchase, first)

    async def get(self, saga_id: str) -> Purchase | None:
        return await self._inner.get(saga_id)

    async def list_for(self, user_id: str, limit: int, before: int) -> Page:
        return await self._inner.list_for(user_id, limit, before)

    async def run_step(self, saga_id: str, step: Step, decide: Decide) -> Purchase | None:
        after = await self._inner.run_step(saga_id, step, decide)
        if after is not None:  # committed (an exception rolled back and counts nothing)
            self._metrics.step_done(step, after)
        return after

    async def stuck(self, updated_before: datetime, limit: int) -> Sequence[str]:
        return await self._inner.stuck(updated_before, limit)


class MeteredRecovery:
    """A SagaRecovery that counts the sagas each pass moved."""

    def __init__(self, inner: SagaRecovery, metrics: SagaMetrics) -> None:
        self._inner, self._metrics = inner, metrics

    async def recover_stuck(self, limit: int) -> int:
        moved = await self._inner.recover_stuck(limit)
        self._metrics.recovered.inc(moved)
        return moved
