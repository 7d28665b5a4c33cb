"""The relay over a store that reads and acknowledges every shard in one call (ADR 0035)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky_tokens.token.adapters.event_bus import PublishError
from leaky_tokens.token.adapters.event_relay import EventRelay, RelayMetrics
from leaky_tokens.token.adapters.in_memory_decision_store import InMemoryDecisionStore
from leaky_tokens.token.adapters.resilient_decision_store import ResilientDecisionStore
from leaky_tokens.token.adapters.settings import FailureMode
from leaky_tokens.token.domain.decision import Level
from leaky_tokens.token.domain.ports import StoredEvent, StoreUnavailableError, Subject

T0 = 1_780_000_000_000
TOPIC = "leaky.usage.v1"


class Bus:
    """Keeps each publish's event ids; fails the first `failures` publishes."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.attempts: list[list[str]] = []
        self.delivered: list[str] = []

    async def publish(self, topic: str, batch: Sequence[EventEnvelope]) -> None:
        self.attempts.append([e.event_id for e in batch])
        if self.failures:
            self.failures -= 1
            raise PublishError("broker away")
        self.delivered += [e.event_id for e in batch]

    async def close(self) -> None:
        return None


class Lease:
    def __init__(self, held: bool) -> None:
        self.held = held

    async def claim(self) -> bool:
        return self.held

    async def release(self) -> None:
        return None


class Shards(InMemoryDecisionStore):
    """`count` event logs (in-memory stores) with the batch calls, which it counts; the
    one-shard calls fail, so the relay is seen to use the batch ones only."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.logs = [InMemoryDecisionStore() for _ in range(count)]
        self.reads: list[list[int]] = []
        self.acks: list[list[int]] = []
        self.down = False
        self.ack_fails: set[int] = set()

    @property
    def shard_count(self) -> int:
        return len(self.logs)

    async def read_events(self, shard: int, after: str, limit: int) -> list[StoredEvent]:
        raise AssertionError("read shard by shard")

    async def ack_events(self, shard: int, upto: str) -> int:
        raise AssertionError("acknowledged shard by shard")

    async def read_events_batch(
        self, shards: Sequence[int], limit: int
    ) -> list[list[StoredEvent] | BaseException]:
        self.reads.append(list(shards))
        if self.down:
            raise StoreUnavailableError("redis away")
        return [await self.logs[s].read_events(0, "", limit) for s in shards]

    async def ack_events_batch(self, acks: Sequence[tuple[int, str]]) -> list[int | BaseException]:
        self.acks.append([s for s, _ in acks])
        done: list[int | BaseException] = []
        for shard, upto in acks:
            if shard in self.ack_fails:
                done.append(StoreUnavailableError("redis away"))
            else:
                done.append(await self.logs[shard].ack_events(0, upto))
        return done


async def recorded(store: InMemoryDecisionStore, name: str, n: int) -> list[str]:
    who = Subject(name, "openai")
    for i in range(n):
        await store.credit_balance(who, Level.USER_QUOTA, 1, f"{name}-{i}", T0 + i)
    return [f"{name}-{i}" for i in range(n)]


async def sleep(seconds: float) -> None:
    return None


def relay(store: InMemoryDecisionStore, bus: Bus, **kw: object) -> EventRelay:
    return EventRelay(store, bus, TOPIC, now_ms=lambda: T0, sleep=sleep, **kw)  # type: ignore[arg-type]


async def test_a_pass_reads_every_shard_in_one_call_and_acknowledges_in_one_call() -> None:
    store, bus = Shards(4), Bus()
    ids = [await recorded(store.logs[s], f"u{s}", 2) for s in (0, 2, 3)]
    assert await relay(store, bus).relay_once() == 6
    assert store.reads == [[0, 1, 2, 3]]
    assert store.acks == [[0, 2, 3]]
    assert bus.attempts == [ids[0] + ids[1] + ids[2]]  # each shard's events in their order
    assert [await log.read_events(0, "", 10) for log in store.logs] == [[], [], [], []]
    assert await relay(store, bus).relay_once() == 0
    assert store.acks == [[0, 2, 3]]  # nothing found, nothing acknowledged


async def test_a_publish_holds_at_most_a_batch_and_never_splits_a_shard() -> None:
    store, bus = Shards(3), Bus()
    ids = [await recorded(store.logs[s], f"u{s}", n) for s, n in ((0, 2), (1, 2), (2, 3))]
    assert await relay(store, bus, batch=4).relay_once() == 7
    assert bus.attempts == [ids[0] + ids[1], ids[2]]
    assert store.acks == [[0, 1], [2]]


async def test_the_own_log_never_shares_a_publish_and_goes_without_the_lease() -> None:
    store, bus = Shards(3), Bus()
    shared = await recorded(store.logs[0], "shared", 1)
    own = await recorded(store.logs[2], "own", 1)
    kept = relay(store, bus, lease=Lease(False), own_shards=frozenset({2}))
    assert await kept.relay_once() == 1
    assert store.reads == [[2]]
    assert bus.attempts == [own]
    assert await store.logs[0].read_events(0, "", 10) != []  # the lease holder's to relay
    await recorded(store.logs[2], "own2", 1)
    assert await relay(store, bus, own_shards=frozenset({2})).relay_once() == 2
    assert bus.attempts[1:] == [shared, ["own2-0"]]


async def test_a_failed_acknowledgement_sends_only_that_shards_events_again() -> None:
    store, bus = Shards(2), Bus()
    first = await recorded(store.logs[0], "a", 2)
    second = await recorded(store.logs[1], "b", 2)
    store.ack_fails = {1}
    metrics = RelayMetrics(CollectorRegistry())
    assert await relay(store, bus, metrics=metrics).relay_once() == 2
    assert metrics.failures.labels("store")._value.get() == 1
    assert metrics.relayed._value.get() == 2
    store.ack_fails = set()
    assert await relay(store, bus).relay_once() == 2
    assert bus.delivered == first + second + second  # a duplicate, never a loss


async def test_a_failing_bus_gets_the_same_batch_and_nothing_is_acknowledged_meanwhile() -> None:
    store, bus = Shards(2), Bus(failures=2)
    ids = await recorded(store.logs[0], "a", 1) + await recorded(store.logs[1], "b", 1)
    metrics = RelayMetrics(CollectorRegistry())
    assert await relay(store, bus, metrics=metrics).relay_once() == 2
    assert bus.attempts == [ids] * 3
    assert store.acks == [[0, 1]]
    assert metrics.failures.labels("publish")._value.get() == 2


async def test_a_store_that_cannot_read_counts_each_shard_and_says_so() -> None:
    store, bus = Shards(3), Bus()
    await recorded(store.logs[1], "a", 1)
    store.down = True
    metrics = RelayMetrics(CollectorRegistry())
    with pytest.raises(StoreUnavailableError):
        await relay(store, bus, metrics=metrics).relay_once()
    assert metrics.failures.labels("store")._value.get() == 3
    assert bus.attempts == []


async def test_the_failure_policy_batches_the_primarys_shards_and_reads_its_own_log() -> None:
    primary = Shards(2)
    changes: list[bool] = []
    store = ResilientDecisionStore(
        primary,
        FailureMode.LOCAL_EMERGENCY,
        timeout_s=0.05,
        recovery_s=60.0,
        on_degraded=changes.append,
    )
    shared = await recorded(primary.logs[1], "a", 1)
    own = await recorded(store._local, "b", 1)  # the degraded-mode log, the last shard
    found = await store.read_events_batch([0, 1, 2], 10)
    assert primary.reads == [[0, 1]]
    logs = [f for f in found if isinstance(f, list)]
    assert [[e.event.event_id for e in f] for f in logs] == [[], shared, own]
    acks = [(1, logs[1][-1].position), (2, logs[2][-1].position)]
    assert await store.ack_events_batch(acks) == [1, 1]
    assert primary.acks == [[1]]
    primary.down = True
    down = await store.read_events_batch([0, 1, 2], 10)
    assert [type(f) for f in down[:2]] == [StoreUnavailableError] * 2
    assert down[2] == []
    assert changes == [True]  # the store is degraded, as any call to a dead primary says
