"""Decision and request-counter stores that count every decision and time every store call."""

from __future__ import annotations

from collections.abc import Sequence
from time import perf_counter

from leaky_tokens.token.adapters.token_metrics import (
    ALL,
    DESCRIPTOR,
    NO_PROVIDER,
    PURCHASED,
    Operation,
    Outcome,
    Rpc,
    TokenMetrics,
)
from leaky_tokens.token.domain.decision import Allowed, Denied, Level, Snapshot
from leaky_tokens.token.domain.policy import LevelLimits
from leaky_tokens.token.domain.ports import (
    CreditOutcome,
    DecisionOutcome,
    DecisionRequest,
    DecisionStore,
    RefundOutcome,
    ReserveOutcome,
    ReserveRequest,
    RevertOutcome,
    StoredEvent,
    StoreUnavailableError,
    Subject,
)
from leaky_tokens.token.domain.rate_counter import CounterHit, CountStep, RequestCounterStore
from leaky_tokens.token.domain.reservation import Reserved, Settlement


def deciding_level(result: Allowed | Reserved | Denied) -> str:
    """The level a decision is counted under: the refusing one if denied; if allowed,
    `purchased` when a purchased balance paid, else the tightest level (fewest left)."""
    if isinstance(result, Denied):
        return result.level.value
    debit = result.debit if isinstance(result, Allowed) else result.reservation.debit
    for quota in debit.quotas.values():
        if quota.from_balance:
            return PURCHASED
    tightest = None
    for status in result.statuses:  # a plain loop: min(key=...) costs twice as much here
        if tightest is None or status.remaining < tightest.remaining:
            tightest = status
    return ALL if tightest is None else tightest.level.value


class MeteredDecisionStore:
    """A DecisionStore that counts each decision once and times each call (ADR 0030).

    `decide_rpc` names the RPC whose decisions `decide` makes (Consume, or ShouldRateLimit's
    token descriptors: the bootstrap gives each its own wrapper of the same store).
    """

    def __init__(
        self, inner: DecisionStore, metrics: TokenMetrics, decide_rpc: Rpc = Rpc.CONSUME
    ) -> None:
        self._inner = inner
        self._m = metrics
        self._rpc = decide_rpc.value
        self._tenants = metrics.tenants
        lat = metrics.latency
        self._t_decide, self._t_reserve = lat[Operation.DECIDE], lat[Operation.RESERVE]
        self._t_settle, self._t_release = lat[Operation.SETTLE], lat[Operation.RELEASE]
        self._t_refund, self._t_credit = lat[Operation.REFUND], lat[Operation.CREDIT]
        self._t_read, self._t_sweep = lat[Operation.READ], lat[Operation.SWEEP]
        self._expired = metrics.decision(Rpc.RELEASE, NO_PROVIDER, ALL, Outcome.EXPIRED)

    async def decide(self, request: DecisionRequest) -> DecisionOutcome:
        provider = request.subject.provider
        started = perf_counter()
        try:
            outcome = await self._inner.decide(request)
        except StoreUnavailableError:
            self._m.decision(self._rpc, provider, ALL, Outcome.UNAVAILABLE).inc()
            raise
        finally:
            self._t_decide.observe(perf_counter() - started)
        self._counted(self._rpc, request.subject, request.tokens, outcome.result, outcome.replayed)
        return outcome

    async def reserve(self, request: ReserveRequest) -> ReserveOutcome:
        provider = request.subject.provider
        started = perf_counter()
        try:
            outcome = await self._inner.reserve(request)
        except StoreUnavailableError:
            self._m.decision(Rpc.RESERVE, provider, ALL, Outcome.UNAVAILABLE).inc()
            raise
        finally:
            self._t_reserve.observe(perf_counter() - started)
        self._counted(
            Rpc.RESERVE, request.subject, request.estimate, outcome.result, outcome.replayed
        )
        return outcome

    def _counted(
        self,
        rpc: str,
        subject: Subject,
        tokens: int,
        result: Allowed | Reserved | Denied,
        replayed: bool,
    ) -> None:
        if replayed:
            outcome = Outcome.REPLAYED
        elif isinstance(result, Denied):
            outcome = Outcome.DENIED
        else:
            outcome = Outcome.ALLOWED
            if self._tenants is not None:
                self._tenants.add(subject.tenant, tokens)
        self._m.decision(rpc, subject.provider, deciding_level(result), outcome).inc()

    async def refund(
        self, subject: Subject, decision_id: str, tokens: int, now_ms: int, reason: str = ""
    ) -> RefundOutcome:
        started = perf_counter()
        try:
            done = await self._inner.refund(subject, decision_id, tokens, now_ms, reason)
        finally:
            self._t_refund.observe(perf_counter() - started)
        if done.changed:
            self._m.decision(Rpc.CONSUME, subject.provider, ALL, Outcome.REFUNDED).inc()
        return done

    async def settle(
        self, subject: Subject, reservation_id: str, actual: int, now_ms: int
    ) -> Settlement | None:
        started = perf_counter()
        try:
            done = await self._inner.settle(subject, reservation_id, actual, now_ms)
        finally:
            self._t_settle.observe(perf_counter() - started)
        self._closed(Rpc.SETTLE, subject, done, Outcome.SETTLED)
        return done

    async def release(
        self, subject: Subject, reservation_id: str, now_ms: int
    ) -> Settlement | None:
        started = perf_counter()
        try:
            done = await self._inner.release(subject, reservation_id, now_ms)
        finally:
            self._t_release.observe(perf_counter() - started)
        self._closed(Rpc.RELEASE, subject, done, Outcome.RELEASED)
        return done

    def _closed(self, rpc: Rpc, subject: Subject, done: Settlement | None, ok: Outcome) -> None:
        outcome = Outcome.NOT_FOUND if done is None else ok if done.changed else Outcome.REPLAYED
        self._m.decision(rpc, subject.provider, ALL, outcome).inc()

    async def credit_balance(
        self, subject: Subject, level: Level, tokens: int, grant_id: str, now_ms: int,
        granted_by: str = "", reason: str = "",
    ) -> CreditOutcome:  # fmt: skip
        started = perf_counter()
        try:
            return await self._inner.credit_balance(
                subject, level, tokens, grant_id, now_ms, granted_by, reason
            )
        finally:
            self._t_credit.observe(perf_counter() - started)

    async def revert_credit(
        self, subject: Subject, level: Level, grant_id: str, now_ms: int, reason: str = ""
    ) -> RevertOutcome:
        started = perf_counter()
        try:
            return await self._inner.revert_credit(subject, level, grant_id, now_ms, reason)
        finally:
            self._t_credit.observe(perf_counter() - started)

    async def read(self, subject: Subject, limits: LevelLimits, now_ms: int) -> Snapshot:
        started = perf_counter()
        try:
            return await self._inner.read(subject, limits, now_ms)
        finally:
            self._t_read.observe(perf_counter() - started)

    async def sweep_expired(self, now_ms: int) -> int:
        started = perf_counter()
        try:
            swept = await self._inner.sweep_expired(now_ms)
        finally:
            self._t_sweep.observe(perf_counter() - started)
        if swept:
            self._expired.inc(swept)
        return swept

    # The relay reads the events from the unwrapped store; these only complete the port.
    @property
    def shard_count(self) -> int:
        return self._inner.shard_count

    async def read_events(self, shard: int, after: str, limit: int) -> list[StoredEvent]:
        return await self._inner.read_events(shard, after, limit)

    async def ack_events(self, shard: int, upto: str) -> int:
        return await self._inner.ack_events(shard, upto)


class MeteredRequestCounter:
    """A RequestCounterStore that counts ShouldRateLimit's request-count decisions."""

    def __init__(self, inner: RequestCounterStore, metrics: TokenMetrics) -> None:
        self._inner = inner
        self._latency = metrics.latency[Operation.RLS_HIT]
        rpc = Rpc.SHOULD_RATE_LIMIT
        self._allowed = metrics.decision(rpc, NO_PROVIDER, DESCRIPTOR, Outcome.ALLOWED)
        self._denied = metrics.decision(rpc, NO_PROVIDER, DESCRIPTOR, Outcome.DENIED)
        self._unavailable = metrics.decision(rpc, NO_PROVIDER, DESCRIPTOR, Outcome.UNAVAILABLE)

    async def hit(self, hits: Sequence[CounterHit], now_ms: int) -> CountStep:
        if not hits:  # only token descriptors (counted by the decision store) or no match
            return await self._inner.hit(hits, now_ms)
        started = perf_counter()
        try:
            step = await self._inner.hit(hits, now_ms)
        except StoreUnavailableError:
            self._unavailable.inc()
            raise
        finally:
            self._latency.observe(perf_counter() - started)
        (self._allowed if step.admitted else self._denied).inc()
        return step

    async def close(self) -> None:
        await self._inner.close()
