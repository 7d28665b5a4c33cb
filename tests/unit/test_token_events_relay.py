"""The relay loop with fakes: nothing acknowledged before the bus confirmed it, order kept."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky_tokens.runtime.settings import SettingsError
from leaky_tokens.token.adapters.event_bus import InProcessEventBus, PublishError
from leaky_tokens.token.adapters.event_relay import EventRelay, RelayMetrics
from leaky_tokens.token.adapters.in_memory_decision_store import InMemoryDecisionStore
from leaky_tokens.token.adapters.relay_settings import RelaySettings
from leaky_tokens.token.domain.decision import Level
from leaky_tokens.token.domain.ports import StoredEvent, StoreUnavailableError, Subject

T0 = 1_780_000_000_000
ALICE = Subject("alice", "openai")
TOPIC = "leaky.usage.v1"


class FlakyBus:
    """Fails the first `failures` publishes, then keeps what it was given."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.attempts: list[list[str]] = []
        self.delivered: list[str] = []
        self.closed = False

    async def publish(self, topic: str, batch: Sequence[EventEnvelope]) -> None:
        assert topic == TOPIC
        self.attempts.append([e.event_id for e in batch])
        if self.failures:
            self.failures -= 1
            raise PublishError("broker away")
        self.delivered.extend(e.event_id for e in batch)

    async def close(self) -> None:
        self.closed = True


class Lease:
    def __init__(self, answers: list[bool]) -> None:
        self.answers = answers

    async def claim(self) -> bool:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    async def release(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = T0
        self.slept: list[float] = []

    def now_ms(self) -> int:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += int(seconds * 1000)


async def recorded(store: InMemoryDecisionStore, n: int) -> list[str]:
    """n real events from the store (grants are the simplest decision to make)."""
    for i in range(n):
        await store.credit_balance(ALICE, Level.USER_QUOTA, 1, f"g-{i}", T0 + i)
    return [f"g-{i}" for i in range(n)]


async def waiting(store: InMemoryDecisionStore) -> list[str]:
    return [s.event.event_id for s in await store.read_events(0, "", 1000)]


def relay(
    store: InMemoryDecisionStore, bus: FlakyBus | InProcessEventBus, clock: Clock, **kw: object
) -> EventRelay:
    return EventRelay(
        store,
        bus,
        TOPIC,
        now_ms=clock.now_ms,
        sleep=clock.sleep,
        backoff_s=0.1,
        backoff_max_s=0.4,
        **kw,  # type: ignore[arg-type]
    )


async def test_every_event_is_published_in_order_then_acknowledged() -> None:
    store, bus, clock = InMemoryDecisionStore(), FlakyBus(), Clock()
    ids = await recorded(store, 5)
    assert await relay(store, bus, clock).relay_once() == 5
    assert bus.delivered == ids
    assert await waiting(store) == []


async def test_a_failing_bus_gets_the_same_batch_again_and_nothing_is_acknowledged_meanwhile() -> (
    None
):
    store, bus, clock = InMemoryDecisionStore(), FlakyBus(failures=4), Clock()
    ids = await recorded(store, 3)
    seen_while_failing: list[list[str]] = []

    async def sleep(seconds: float) -> None:
        seen_while_failing.append(await waiting(store))
        await clock.sleep(seconds)

    metrics = RelayMetrics(CollectorRegistry())
    relayer = EventRelay(
        store, bus, TOPIC, now_ms=clock.now_ms, sleep=sleep, backoff_s=0.1,
        backoff_max_s=0.4, metrics=metrics,
    )  # fmt: skip
    assert await relayer.relay_once() == 3
    assert bus.attempts == [ids] * 5  # the same batch each time, in order
    assert seen_while_failing == [ids] * 4  # nothing acknowledged before the broker said so
    assert clock.slept == [0.1, 0.2, 0.4, 0.4]  # doubling, capped
    assert bus.delivered == ids
    assert await waiting(store) == []
    assert metrics.failures.labels("publish")._value.get() == 4
    assert metrics.relayed._value.get() == 3


async def test_lag_is_the_age_of_the_oldest_waiting_event_and_falls_to_zero_once_relayed() -> None:
    store, clock = InMemoryDecisionStore(), Clock()
    await recorded(store, 2)
    lags: list[float] = []
    metrics = RelayMetrics(CollectorRegistry())

    async def sleep(seconds: float) -> None:
        lags.append(metrics.lag._value.get())
        await clock.sleep(seconds)

    relayer = EventRelay(
        store, FlakyBus(failures=2), TOPIC, now_ms=clock.now_ms, sleep=sleep, backoff_s=1.0,
        backoff_max_s=1.0, metrics=metrics,
    )  # fmt: skip
    await relayer.relay_once()
    assert lags == [0.0, 1.0]  # the oldest event (at T0) as the clock moves on
    assert metrics.lag._value.get() == 0


async def test_large_logs_go_in_batches_in_order() -> None:
    store, bus, clock = InMemoryDecisionStore(), FlakyBus(), Clock()
    ids = await recorded(store, 5)
    relayer = relay(store, bus, clock, batch=2)
    assert [await relayer.relay_once() for _ in range(4)] == [2, 2, 1, 0]
    assert bus.attempts == [ids[0:2], ids[2:4], ids[4:]]


async def test_an_instance_without_the_lease_publishes_nothing() -> None:
    store, bus, clock = InMemoryDecisionStore(), FlakyBus(), Clock()
    ids = await recorded(store, 2)
    assert await relay(store, bus, clock, lease=Lease([False])).relay_once() == 0
    assert bus.attempts == []
    assert await waiting(store) == ids


async def test_losing_the_lease_while_retrying_stops_without_acknowledging() -> None:
    store, bus, clock = InMemoryDecisionStore(), FlakyBus(failures=5), Clock()
    ids = await recorded(store, 2)
    assert await relay(store, bus, clock, lease=Lease([True, False])).relay_once() == 0
    assert len(bus.attempts) == 1
    assert await waiting(store) == ids


class AckFailsOnce(InMemoryDecisionStore):
    def __init__(self) -> None:
        super().__init__()
        self.ack_failures = 1

    async def ack_events(self, shard: int, upto: str) -> int:
        if self.ack_failures:
            self.ack_failures -= 1
            raise StoreUnavailableError("redis away")
        return await super().ack_events(shard, upto)


async def test_a_lost_acknowledgement_means_a_duplicate_never_a_loss() -> None:
    store, bus, clock = AckFailsOnce(), FlakyBus(), Clock()
    ids = await recorded(store, 2)
    relayer = relay(store, bus, clock)
    with pytest.raises(StoreUnavailableError):
        await relayer.relay_once()
    assert await relayer.relay_once() == 2
    assert bus.delivered == ids + ids
    assert await waiting(store) == []


class ReadFailsOnce(InMemoryDecisionStore):
    def __init__(self) -> None:
        super().__init__()
        self.read_failures = 1

    async def read_events(self, shard: int, after: str, limit: int) -> list[StoredEvent]:
        if self.read_failures:
            self.read_failures -= 1
            raise StoreUnavailableError("redis away")
        return await super().read_events(shard, after, limit)


async def test_the_loop_outlives_an_unreachable_store() -> None:
    store, bus, clock = ReadFailsOnce(), FlakyBus(), Clock()
    ids = await recorded(store, 2)

    async def sleep(seconds: float) -> None:
        await clock.sleep(seconds)
        if bus.delivered:  # the pass after the failure relayed everything: stop the loop
            raise asyncio.CancelledError

    metrics = RelayMetrics(CollectorRegistry())
    relayer = EventRelay(store, bus, TOPIC, now_ms=clock.now_ms, sleep=sleep, metrics=metrics)
    with pytest.raises(asyncio.CancelledError):
        await relayer.run()
    assert bus.delivered == ids
    assert metrics.failures.labels("store")._value.get() == 1


async def test_in_process_subscribers_get_the_envelopes_and_a_failing_one_is_retried() -> None:
    store, clock, bus = InMemoryDecisionStore(), Clock(), InProcessEventBus()
    ids = await recorded(store, 3)
    got: list[str] = []
    fail = [True]

    async def subscriber(topic: str, envelope: EventEnvelope) -> None:
        if fail and envelope.event_id == ids[1]:
            fail.clear()
            raise RuntimeError("analytics hiccup")
        got.append(envelope.event_id)

    bus.subscribe(subscriber)
    assert await relay(store, bus, clock).relay_once() == 3
    assert got == [ids[0], ids[0], ids[1], ids[2]]  # the failed batch again: at least once
    assert await waiting(store) == []


async def test_an_unsubscribed_or_closed_bus_hands_nothing_on() -> None:
    bus = InProcessEventBus()
    got: list[str] = []

    async def subscriber(topic: str, envelope: EventEnvelope) -> None:
        got.append(envelope.event_id)

    unsubscribe = bus.subscribe(subscriber)
    unsubscribe()
    await bus.publish(TOPIC, [EventEnvelope(event_id="e")])
    assert got == []
    await bus.close()
    with pytest.raises(PublishError):
        await bus.publish(TOPIC, [EventEnvelope(event_id="e")])


async def test_stop_closes_the_bus_and_leaves_unrelayed_events_in_the_store() -> None:
    store, bus, clock = InMemoryDecisionStore(), FlakyBus(failures=10**6), Clock()
    ids = await recorded(store, 1)
    retried = asyncio.Event()

    async def sleep(seconds: float) -> None:
        if len(bus.attempts) >= 2:
            retried.set()
        await asyncio.sleep(0)

    relayer = EventRelay(store, bus, TOPIC, now_ms=clock.now_ms, sleep=sleep)
    relayer.start()
    await retried.wait()
    await relayer.stop()
    assert bus.closed
    assert await waiting(store) == ids


@pytest.mark.parametrize(
    ("field", "value"),
    [("events_bus", "rabbit"), ("events_batch", 0), ("events_backoff_max_ms", 1)],
)
def test_bad_relay_settings_are_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(SettingsError, match=field):
        RelaySettings(**{field: value})  # type: ignore[arg-type]


class TwoLogs(InMemoryDecisionStore):
    """Shard 0 shared (Redis in life), shard 1 this instance's own degraded-mode log."""

    def __init__(self) -> None:
        super().__init__()
        self.local = InMemoryDecisionStore()
        self.shared_down = False

    @property
    def shard_count(self) -> int:
        return 2

    async def read_events(self, shard: int, after: str, limit: int) -> list[StoredEvent]:
        if shard == 1:
            return await self.local.read_events(0, after, limit)
        if self.shared_down:
            raise StoreUnavailableError("redis away")
        return await super().read_events(shard, after, limit)

    async def ack_events(self, shard: int, upto: str) -> int:
        if shard == 1:
            return await self.local.ack_events(0, upto)
        return await super().ack_events(shard, upto)


async def test_an_instances_own_log_is_relayed_without_the_lease_and_while_redis_is_down() -> None:
    store, bus, clock = TwoLogs(), FlakyBus(), Clock()
    shared = await recorded(store, 2)
    own = await recorded(store.local, 1)
    store.shared_down = True
    relayer = relay(store, bus, clock, lease=Lease([False]), own_shards=frozenset({1}))
    assert await relayer.relay_once() == 1
    assert bus.delivered == own
    store.shared_down = False
    assert await waiting(store) == shared  # the lease holder's to relay, not ours


async def test_a_shard_the_store_cannot_serve_does_not_hold_up_the_others() -> None:
    store, bus, clock = TwoLogs(), FlakyBus(), Clock()
    await recorded(store, 2)
    own = await recorded(store.local, 1)
    store.shared_down = True
    metrics = RelayMetrics(CollectorRegistry())
    assert await relay(store, bus, clock, metrics=metrics).relay_once() == 1
    assert bus.delivered == own
    assert metrics.failures.labels("store")._value.get() == 1
    with pytest.raises(StoreUnavailableError):  # nothing left to relay but the down shard
        await relay(store, bus, clock).relay_once()


class SwallowingBus(FlakyBus):
    """Fails twice, then hangs once in a send that swallows its cancellation (as aiokafka
    can), then fails at once."""

    def __init__(self) -> None:
        super().__init__(failures=2)
        self.parked = asyncio.Event()
        self.swallowed = False

    async def publish(self, topic: str, batch: Sequence[EventEnvelope]) -> None:
        if self.failures:
            await super().publish(topic, batch)
        self.attempts.append([e.event_id for e in batch])
        if not self.parked.is_set():
            self.parked.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.swallowed = True  # the cancellation is lost here; the send fails instead
        raise PublishError("broker away")  # and fails at once from then on


class CountingLease(Lease):
    def __init__(self) -> None:
        super().__init__([True])
        self.claims_after_release = 0
        self.released = False

    async def claim(self) -> bool:
        if self.released:
            self.claims_after_release += 1
        return True

    async def release(self) -> None:
        self.released = True


async def test_a_swallowed_cancellation_still_stops_the_relay_without_acknowledging() -> None:
    store, bus = InMemoryDecisionStore(), SwallowingBus()
    ids = await recorded(store, 1)
    lease = CountingLease()
    relayer = EventRelay(
        store, bus, TOPIC, now_ms=lambda: T0, sleep=lambda s: asyncio.sleep(0), lease=lease
    )
    relayer.start()
    await bus.parked.wait()
    await relayer.stop()
    attempts = len(bus.attempts)
    for _ in range(20):  # a relay still running would publish or claim again by now
        await asyncio.sleep(0)
    assert bus.swallowed
    assert len(bus.attempts) == attempts
    assert lease.claims_after_release == 0
    assert await waiting(store) == ids  # nothing acknowledged: relayed after a restart


async def test_while_events_keep_coming_passes_are_paced_not_back_to_back() -> None:
    store, bus = InMemoryDecisionStore(), FlakyBus()
    ids = await recorded(store, 5)
    waits: list[float] = []
    passes = asyncio.Event()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(bus.delivered) < 10:  # the next pass finds new events too
            await store.credit_balance(ALICE, Level.USER_QUOTA, 1, f"h-{len(waits)}", T0)
        else:
            passes.set()
        await asyncio.sleep(0)

    relayer = EventRelay(
        store, bus, TOPIC, now_ms=lambda: T0, sleep=sleep, batch=5, pass_s=0.05, poll_s=0.2
    )
    relayer.start()
    await passes.wait()
    await relayer.stop()
    assert bus.delivered[:5] == ids
    busy = [w for w in waits if w != 0.2]  # waits after a pass that relayed something
    assert busy, "a pass that relayed events was followed by no wait at all"
    assert all(0 < w <= 0.05 for w in busy)


def test_a_negative_pass_interval_is_refused_by_name() -> None:
    with pytest.raises(SettingsError, match="events_pass_ms"):
        RelaySettings(events_pass_ms=-1)


async def test_a_backlog_drains_pass_after_pass_without_the_pace() -> None:
    store, bus = InMemoryDecisionStore(), FlakyBus()
    ids = await recorded(store, 12)
    waits: list[float] = []
    drained = asyncio.Event()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(bus.delivered) == 12:
            drained.set()
        await asyncio.sleep(0)

    relayer = EventRelay(
        store, bus, TOPIC, now_ms=lambda: T0, sleep=sleep, batch=5, pass_s=10.0, poll_s=0.2
    )
    relayer.start()
    await drained.wait()
    await relayer.stop()
    assert bus.delivered == ids
    # Two full batches went out back to back; only the pass that found the log's end
    # (2 events) waited for the pace.
    assert waits[0] > 9.0
    assert len([w for w in waits if w > 0.2]) == 1
