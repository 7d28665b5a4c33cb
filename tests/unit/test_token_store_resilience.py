"""The failure policy around the shared store, on a Redis-less backend that can go down."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from leaky_tokens.runtime.settings import SettingsError, load
from leaky_tokens.token.adapters.in_memory_decision_store import InMemoryDecisionStore
from leaky_tokens.token.adapters.reservation_sweeper import ReservationSweeper
from leaky_tokens.token.adapters.resilient_decision_store import ResilientDecisionStore
from leaky_tokens.token.adapters.settings import FailureMode, TokenStoreSettings
from leaky_tokens.token.adapters.store_factory import decision_store
from leaky_tokens.token.domain.bucket import BucketLimit
from leaky_tokens.token.domain.decision import Allowed, Denied, Level
from leaky_tokens.token.domain.policy import LevelLimits
from leaky_tokens.token.domain.ports import (
    DecisionOutcome,
    DecisionRequest,
    EventKind,
    RefundOutcome,
    ReserveRequest,
    StoreUnavailableError,
    Subject,
)

T0 = 1_780_000_000_000
ALICE = Subject("alice", "openai")
LIMITS = LevelLimits({Level.USER_BUCKET: BucketLimit.tokens(100, 1000)}, {})


class FlakyStore(InMemoryDecisionStore):
    """The in-memory store behind a switch: up, down (connection refused) or hanging."""

    def __init__(self) -> None:
        super().__init__()
        self.state = "up"
        self.calls = 0

    async def _gate(self) -> None:
        self.calls += 1
        if self.state == "down":
            raise StoreUnavailableError("redis: connection refused")
        if self.state == "hang":
            await asyncio.Event().wait()

    async def decide(self, request: DecisionRequest) -> DecisionOutcome:
        await self._gate()
        return await super().decide(request)

    async def refund(
        self, subject: Subject, decision_id: str, tokens: int, now_ms: int, reason: str = ""
    ) -> RefundOutcome:
        await self._gate()
        return await super().refund(subject, decision_id, tokens, now_ms, reason)


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def wrapped(
    mode: FailureMode, *, timeout_s: float = 0.05, trip_after_s: float = 0.0
) -> tuple[ResilientDecisionStore, FlakyStore, FakeMonotonic, list[bool]]:
    primary, clock = FlakyStore(), FakeMonotonic()
    changes: list[bool] = []
    store = ResilientDecisionStore(
        primary,
        mode,
        timeout_s=timeout_s,
        recovery_s=1.0,
        trip_after_s=trip_after_s,
        emergency_percent=10,
        on_degraded=changes.append,
        monotonic=clock,
    )
    return store, primary, clock, changes


def ask(tokens: int, now: int = T0) -> DecisionRequest:
    return DecisionRequest(uuid.uuid4().hex, ALICE, LIMITS, tokens, now)


async def test_fail_closed_refuses_while_down_and_recovers_by_itself() -> None:
    store, primary, clock, changes = wrapped(FailureMode.FAIL_CLOSED)
    assert isinstance((await store.decide(ask(10))).result, Allowed)
    primary.state = "down"
    with pytest.raises(StoreUnavailableError):
        await store.decide(ask(10))
    assert store.degraded
    assert changes == [True]
    primary.state = "up"
    calls = primary.calls
    with pytest.raises(StoreUnavailableError):  # before the retry time: the primary is spared
        await store.decide(ask(10))
    assert primary.calls == calls
    clock.now += 1.0
    assert isinstance((await store.decide(ask(10))).result, Allowed)
    assert not store.degraded
    assert changes == [True, False]


async def test_one_call_per_interval_probes_a_store_that_is_still_down() -> None:
    store, primary, clock, _ = wrapped(FailureMode.LOCAL_EMERGENCY)
    primary.state = "down"
    await store.decide(ask(1))
    clock.now += 1.0
    calls = primary.calls
    outcomes = [await store.decide(ask(1)) for _ in range(5)]
    assert primary.calls == calls + 1
    assert all(isinstance(o.result, Allowed) for o in outcomes)  # the local budget answered


async def test_a_hanging_store_counts_as_down_after_the_timeout() -> None:
    store, primary, _, changes = wrapped(FailureMode.FAIL_CLOSED)  # trip_after_s=0
    primary.state = "hang"
    with pytest.raises(StoreUnavailableError):
        await store.decide(ask(10))
    assert changes == [True]


def slow_tripping(
    mode: FailureMode,
) -> tuple[ResilientDecisionStore, FlakyStore, FakeMonotonic, list[bool]]:
    return wrapped(mode, timeout_s=0.01, trip_after_s=0.5)


async def test_a_timeout_then_an_answer_fails_one_call_and_does_not_degrade() -> None:
    store, primary, clock, changes = slow_tripping(FailureMode.FAIL_CLOSED)
    primary.state = "hang"  # a stalled moment
    with pytest.raises(StoreUnavailableError):
        await store.decide(ask(10))
    assert not store.degraded
    primary.state = "up"
    clock.now += 0.4
    assert isinstance((await store.decide(ask(10))).result, Allowed)
    primary.state = "hang"  # a new stall: the clock starts again after the answer
    clock.now += 0.4
    with pytest.raises(StoreUnavailableError):
        await store.decide(ask(10))
    assert not store.degraded
    assert changes == []


async def test_timeouts_that_go_on_with_no_answer_degrade_the_store() -> None:
    store, primary, clock, changes = slow_tripping(FailureMode.LOCAL_EMERGENCY)
    primary.state = "hang"
    first = await store.decide(ask(1))  # the call falls back, the store is not degraded yet
    assert isinstance(first.result, Allowed)
    assert not store.degraded
    clock.now += 0.49
    await store.decide(ask(1))
    assert not store.degraded
    clock.now += 0.01
    await store.decide(ask(1))
    assert store.degraded
    assert changes == [True]
    calls = primary.calls
    await store.decide(ask(1))  # degraded: the primary is spared until the retry time
    assert primary.calls == calls


async def test_a_refused_connection_degrades_at_once_whatever_the_trip_time() -> None:
    store, primary, _, changes = slow_tripping(FailureMode.FAIL_CLOSED)
    primary.state = "down"
    with pytest.raises(StoreUnavailableError):
        await store.decide(ask(10))
    assert store.degraded
    assert changes == [True]


def test_a_redis_timeout_maps_to_the_store_timeout_error() -> None:
    from redis import exceptions as rx

    from leaky_tokens.token.adapters.redis_errors import mapped
    from leaky_tokens.token.domain.ports import StoreTimeoutError

    assert isinstance(mapped(rx.TimeoutError("no reply within 100 ms")), StoreTimeoutError)
    refused = mapped(rx.ConnectionError("refused"))
    assert isinstance(refused, StoreUnavailableError)
    assert not isinstance(refused, StoreTimeoutError)


async def test_fail_open_admits_beyond_the_limits_and_still_records_events() -> None:
    store, primary, _, _ = wrapped(FailureMode.FAIL_OPEN)
    primary.state = "down"
    outcomes = [await store.decide(ask(100)) for _ in range(5)]  # 5x the capacity
    assert all(isinstance(o.result, Allowed) for o in outcomes)
    local = store.shard_count - 1
    events = await store.read_events(local, "", 100)
    assert [e.event.event_id for e in events] == [o.decision_id for o in outcomes]
    assert all(e.event.kind is EventKind.ALLOWED for e in events)


async def test_local_emergency_grants_a_share_of_each_limit_per_instance() -> None:
    store, primary, _, _ = wrapped(FailureMode.LOCAL_EMERGENCY)
    primary.state = "down"
    first = await store.decide(ask(10))  # 10 % of a 100-token bucket
    assert isinstance(first.result, Allowed)
    over = await store.decide(ask(1))
    assert isinstance(over.result, Denied)
    assert over.result.level is Level.USER_BUCKET
    # The refund goes where the decision was made, even once Redis is back.
    primary.state = "up"
    back = await store.refund(ALICE, first.decision_id, 10, T0)
    assert (back.refunded, back.changed) == (10, True)
    # Still degraded (no retry due yet): the local budget, with the refund back in it.
    assert isinstance((await store.decide(ask(10))).result, Allowed)


async def test_a_shared_decision_cannot_be_refunded_while_the_store_is_down() -> None:
    store, primary, _, _ = wrapped(FailureMode.LOCAL_EMERGENCY)
    made = await store.decide(ask(10))
    primary.state = "down"
    with pytest.raises(StoreUnavailableError):
        await store.refund(ALICE, made.decision_id, 10, T0)


async def test_the_sweeper_releases_expired_reservations_on_its_clock() -> None:
    memory = InMemoryDecisionStore()
    clock = [T0]
    sweeper = ReservationSweeper(memory, lambda: clock[0], interval_s=60)
    await memory.reserve(ReserveRequest("r-1", ALICE, LIMITS, 80, T0, ttl_ms=5_000))
    assert await sweeper.sweep_once() == 0
    clock[0] = T0 + 5_000
    assert await sweeper.sweep_once() == 1
    kinds = [e.event.kind for e in await memory.read_events(0, "", 10)]
    assert kinds == [EventKind.RESERVED, EventKind.RELEASED]


def test_settings_read_the_failure_mode_and_refuse_unknown_ones() -> None:
    env = {
        "LEAKY_TOKEN_STORE_FAILURE_MODE": "local_emergency",
        "LEAKY_TOKEN_STORE_BACKEND": "redis",
    }
    settings = load(TokenStoreSettings, "LEAKY_TOKEN", env)
    assert settings.failure_mode is FailureMode.LOCAL_EMERGENCY
    with pytest.raises(SettingsError, match="fail_closed, fail_open, local_emergency"):
        load(TokenStoreSettings, "LEAKY_TOKEN", {"LEAKY_TOKEN_STORE_FAILURE_MODE": "maybe"})
    with pytest.raises(SettingsError, match="store_emergency_percent"):
        TokenStoreSettings(store_emergency_percent=0)
    assert TokenStoreSettings().store_trip_after_ms == 500
    with pytest.raises(SettingsError, match="store_trip_after_ms"):
        TokenStoreSettings(store_trip_after_ms=-1)


async def test_the_factory_wraps_redis_in_the_failure_policy_and_keeps_memory_bare() -> None:
    assert isinstance(decision_store(TokenStoreSettings()), InMemoryDecisionStore)
    settings = TokenStoreSettings(
        store_backend="redis",
        store_redis_url="redis://127.0.0.1:1/0",  # nothing listens: no connection is made yet
        store_failure_mode="fail_open",
    )
    built = decision_store(settings, on_degraded=lambda _d: None)
    assert isinstance(built, ResilientDecisionStore)
    assert built.shard_count == settings.store_shards + 1
