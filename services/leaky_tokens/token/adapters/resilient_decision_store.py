"""The failure policy around the Redis store: a short timeout, fail closed/open or a local
emergency budget while degraded, and automatic recovery."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from leaky_tokens.token.adapters.in_memory_decision_store import InMemoryDecisionStore
from leaky_tokens.token.adapters.settings import FailureMode
from leaky_tokens.token.domain.bucket import BucketLimit
from leaky_tokens.token.domain.decision import Level, Snapshot
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
    StoreTimeoutError,
    StoreUnavailableError,
    Subject,
)
from leaky_tokens.token.domain.quota import QuotaLimit
from leaky_tokens.token.domain.reservation import Settlement
from leaky_tokens.token.domain.units import SAFE_LIMIT

T = TypeVar("T")
# The relay's reads and trims of every shard at once get at least this long (a backlog's
# replies are large); a decision's call keeps the store's short timeout.
EVENTS_S = 1.0
_LOCAL_IDS = 100_000  # decisions answered locally, remembered for their refunds


class ResilientDecisionStore:
    """A DecisionStore that keeps deciding, as its mode says, while the primary is down.

    A call that fails (a refused or broken connection, an error that says Redis cannot
    serve) marks the store degraded at once (the `on_degraded` hook hears every change, for
    the metric). A call that takes longer than `timeout_s` fails alone: only when timeouts
    have gone on for `trip_after_s` with no call answered in between is the store degraded
    (ADR 0054), so a stalled moment of this process (a busy box, a start-up burst) is not
    taken for Redis being gone. While degraded, calls go to the fallback and one call every
    `recovery_s` tries the primary again, so recovery needs no operator. Decisions answered
    locally keep their events in the local store, served as
    the last shard of `read_events`, so the relay forwards them too. Refunds, settlements
    and releases go where their decision was made; admin grants need the primary.
    """

    def __init__(
        self,
        primary: DecisionStore,
        mode: FailureMode,
        *,
        timeout_s: float,
        recovery_s: float,
        trip_after_s: float = 0.0,
        emergency_percent: int = 10,
        on_degraded: Callable[[bool], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        local: InMemoryDecisionStore | None = None,
    ) -> None:
        self._primary = primary
        self._mode = mode
        self._timeout = timeout_s
        self._recovery = recovery_s
        self._trip_after = trip_after_s
        self._slow_since: float | None = None  # the first of the timeouts since an answer
        self._percent = emergency_percent
        self._hooks = [on_degraded] if on_degraded is not None else []
        self._monotonic = monotonic
        self._local = local or InMemoryDecisionStore()
        self._local_ids: OrderedDict[str, None] = OrderedDict()
        self._degraded = False
        self._retry_at = 0.0

    @property
    def degraded(self) -> bool:
        """Whether calls currently go to the fallback."""
        return self._degraded

    @property
    def mode(self) -> FailureMode:
        """What the store does while degraded."""
        return self._mode

    def listen(self, hook: Callable[[bool], None]) -> None:
        """Call `hook` on every change of `degraded` too (the metrics, ADR 0030)."""
        self._hooks.append(hook)

    # --- decisions: primary, else the mode's fallback ----------------------------------------
    async def decide(self, request: DecisionRequest) -> DecisionOutcome:
        try:
            return await self._try(lambda: self._primary.decide(request))
        except StoreUnavailableError:
            if self._mode is FailureMode.FAIL_CLOSED:
                raise
        self._remember(request.decision_id)
        return await self._local.decide(replace(request, limits=self._fallback(request.limits)))

    async def reserve(self, request: ReserveRequest) -> ReserveOutcome:
        try:
            return await self._try(lambda: self._primary.reserve(request))
        except StoreUnavailableError:
            if self._mode is FailureMode.FAIL_CLOSED:
                raise
        self._remember(request.reservation_id)
        return await self._local.reserve(replace(request, limits=self._fallback(request.limits)))

    async def refund(
        self, subject: Subject, decision_id: str, tokens: int, now_ms: int, reason: str = ""
    ) -> RefundOutcome:
        if decision_id in self._local_ids:
            return await self._local.refund(subject, decision_id, tokens, now_ms, reason)
        return await self._try(
            lambda: self._primary.refund(subject, decision_id, tokens, now_ms, reason)
        )

    async def settle(
        self, subject: Subject, reservation_id: str, actual: int, now_ms: int
    ) -> Settlement | None:
        if reservation_id in self._local_ids:
            return await self._local.settle(subject, reservation_id, actual, now_ms)
        return await self._try(
            lambda: self._primary.settle(subject, reservation_id, actual, now_ms)
        )

    async def release(
        self, subject: Subject, reservation_id: str, now_ms: int
    ) -> Settlement | None:
        if reservation_id in self._local_ids:
            return await self._local.release(subject, reservation_id, now_ms)
        return await self._try(lambda: self._primary.release(subject, reservation_id, now_ms))

    async def credit_balance(
        self, subject: Subject, level: Level, tokens: int, grant_id: str, now_ms: int,
        granted_by: str = "", reason: str = "",
    ) -> CreditOutcome:  # fmt: skip
        # A purchase must land in the shared store; a local balance would be lost.
        return await self._try(
            lambda: self._primary.credit_balance(
                subject, level, tokens, grant_id, now_ms, granted_by, reason
            )
        )

    async def revert_credit(
        self, subject: Subject, level: Level, grant_id: str, now_ms: int, reason: str = ""
    ) -> RevertOutcome:
        # As a credit: a compensation must land in the shared store, or be retried.
        return await self._try(
            lambda: self._primary.revert_credit(subject, level, grant_id, now_ms, reason)
        )

    async def read(self, subject: Subject, limits: LevelLimits, now_ms: int) -> Snapshot:
        try:
            return await self._try(lambda: self._primary.read(subject, limits, now_ms))
        except StoreUnavailableError:
            if self._mode is FailureMode.FAIL_CLOSED:
                raise
        return await self._local.read(subject, self._fallback(limits), now_ms)

    async def sweep_expired(self, now_ms: int) -> int:
        swept = await self._local.sweep_expired(now_ms)
        # Down: the first sweep after recovery releases them (the deadlines stay in Redis).
        with contextlib.suppress(StoreUnavailableError):
            swept += await self._try(lambda: self._primary.sweep_expired(now_ms))
        return swept

    # --- events: the primary's shards, then the local log ---------------------------------
    @property
    def shard_count(self) -> int:
        return self._primary.shard_count + 1

    async def read_events(self, shard: int, after: str, limit: int) -> list[StoredEvent]:
        if shard == self._primary.shard_count:
            return await self._local.read_events(0, after, limit)
        return await self._try(lambda: self._primary.read_events(shard, after, limit))

    async def ack_events(self, shard: int, upto: str) -> int:
        if shard == self._primary.shard_count:
            return await self._local.ack_events(0, upto)
        return await self._try(lambda: self._primary.ack_events(shard, upto))

    async def pending_events(self, shard: int) -> int:
        if shard == self._primary.shard_count:
            return await self._local.pending_events(0)
        backlog = getattr(self._primary, "pending_events", None)
        if backlog is None:  # a primary that cannot count: the relay counts what it read
            raise StoreUnavailableError("the primary store does not count its events")
        count: int = await self._try(lambda: backlog(shard))
        return count

    async def read_events_batch(
        self, shards: Sequence[int], limit: int
    ) -> list[list[StoredEvent] | BaseException]:
        """`read_events(shard, "", limit)` of every shard given: the primary's in one call
        (one round trip where it batches them), the local log's from memory."""
        local = self._primary.shard_count
        shared = [s for s in shards if s != local]
        found: dict[int, list[StoredEvent] | BaseException] = {}
        if shared:
            try:
                got = await self._try(lambda: _read_batch(self._primary, shared, limit), EVENTS_S)
            except StoreUnavailableError as error:
                got = [error] * len(shared)
            found.update(zip(shared, got, strict=True))
        if local in shards:
            found[local] = await self._local.read_events(0, "", limit)
        return [found[s] for s in shards]

    async def ack_events_batch(self, acks: Sequence[tuple[int, str]]) -> list[int | BaseException]:
        """`ack_events` of every (shard, upto) given, the primary's in one call."""
        local = self._primary.shard_count
        shared = [(s, upto) for s, upto in acks if s != local]
        done: dict[int, int | BaseException] = {}
        if shared:
            try:
                got = await self._try(lambda: _ack_batch(self._primary, shared), EVENTS_S)
            except StoreUnavailableError as error:
                got = [error] * len(shared)
            done.update(zip((s for s, _ in shared), got, strict=True))
        for shard, upto in acks:
            if shard == local:
                done[shard] = await self._local.ack_events(0, upto)
        return [done[s] for s, _ in acks]

    # --- the breaker ----------------------------------------------------------------------
    async def _try(self, call: Callable[[], Awaitable[T]], at_least_s: float = 0.0) -> T:
        if self._degraded:
            now = self._monotonic()
            if now < self._retry_at:
                raise StoreUnavailableError("token store degraded: Redis is not reachable")
            # This call probes; the others keep to the fallback until it answers.
            self._retry_at = now + self._recovery
        try:
            # asyncio.timeout, not wait_for: no task of its own per call (this is every
            # decision's path); the call runs in the caller's task, cancelled at the deadline.
            async with asyncio.timeout(max(self._timeout, at_least_s)):
                result = await call()
        except (StoreTimeoutError, TimeoutError) as error:
            self._timed_out()
            raise StoreUnavailableError(f"token store timed out: {error!r}") from error
        except (StoreUnavailableError, OSError) as error:
            self._trip()
            raise StoreUnavailableError(f"token store unavailable: {error!r}") from error
        self._slow_since = None
        self._set_degraded(False)
        return result

    def _timed_out(self) -> None:
        now = self._monotonic()
        if self._degraded:  # a probe that timed out: still down
            self._trip()
            return
        if self._slow_since is None:
            self._slow_since = now
        if now - self._slow_since >= self._trip_after:
            self._trip()

    def _trip(self) -> None:
        self._retry_at = self._monotonic() + self._recovery
        self._slow_since = None
        self._set_degraded(True)

    def _set_degraded(self, degraded: bool) -> None:
        if degraded != self._degraded:
            self._degraded = degraded
            for hook in self._hooks:
                hook(degraded)

    def _remember(self, local_id: str) -> None:
        self._local_ids[local_id] = None
        while len(self._local_ids) > _LOCAL_IDS:
            self._local_ids.popitem(last=False)

    def _fallback(self, limits: LevelLimits) -> LevelLimits:
        if self._mode is FailureMode.FAIL_OPEN:
            return opened(limits)
        return scaled(limits, self._percent)


async def _read_batch(
    store: DecisionStore, shards: list[int], limit: int
) -> list[list[StoredEvent] | BaseException]:
    batch = getattr(store, "read_events_batch", None)
    if batch is not None:
        found: list[list[StoredEvent] | BaseException] = await batch(shards, limit)
        return found
    return [await store.read_events(s, "", limit) for s in shards]


async def _ack_batch(
    store: DecisionStore, acks: list[tuple[int, str]]
) -> list[int | BaseException]:
    batch = getattr(store, "ack_events_batch", None)
    if batch is not None:
        done: list[int | BaseException] = await batch(acks)
        return done
    return [await store.ack_events(s, upto) for s, upto in acks]


def scaled(limits: LevelLimits, percent: int) -> LevelLimits:
    """Each limit cut to `percent` (at least 1): one instance's emergency budget."""

    def cut(value: int) -> int:
        return max(1, value * percent // 100)

    return LevelLimits(
        {
            lv: BucketLimit(cut(b.capacity), cut(b.leak_per_ms), b.scale)
            for lv, b in limits.buckets.items()
        },
        {lv: replace(q, allowance=cut(q.allowance)) for lv, q in limits.quotas.items()},
    )


def opened(limits: LevelLimits) -> LevelLimits:
    """Limits no request reaches (fail_open still records each decision and its event)."""
    buckets = {
        lv: BucketLimit((SAFE_LIMIT - 1) // b.scale, b.leak_per_ms, b.scale)
        for lv, b in limits.buckets.items()
    }
    quotas = {
        lv: QuotaLimit(SAFE_LIMIT - 1, q.window_start_ms, q.window_end_ms)
        for lv, q in limits.quotas.items()
    }
    return LevelLimits(buckets, quotas)
