"""The decision store's event logs read and trimmed for every shard in one call (ADR 0035),
over RedisWire and over redis-py, against a private redis-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis import exceptions as rx
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from leaky_tokens.token.adapters.key_layout import KeyLayout
from leaky_tokens.token.adapters.redis_decision_store import RedisDecisionStore
from leaky_tokens.token.adapters.redis_wire import Endpoint, RedisWire
from leaky_tokens.token.domain.bucket import BucketLimit
from leaky_tokens.token.domain.decision import Level
from leaky_tokens.token.domain.policy import LevelLimits
from leaky_tokens.token.domain.ports import (
    DecisionRequest,
    StoredEvent,
    StoreUnavailableError,
    Subject,
)
from tests.support.redis_cluster import redis_cluster
from tests.support.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000 + 5_000
SHARDS = 8
PREFIX = "evlog"
BUCKET = LevelLimits({Level.USER_BUCKET: BucketLimit.tokens(10_000, 1000)}, {})


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as started:
        yield started


def wire_of(port: int) -> RedisWire:
    return RedisWire(Endpoint(port=port), timeout_s=2.0, connect_timeout_s=2.0)


@pytest.fixture(params=["wire", "redis"])
async def store(
    request: pytest.FixtureRequest, server: RedisServer
) -> AsyncIterator[RedisDecisionStore]:
    # "wire": the single-Redis default, the relay's reads on a RedisWire of their own;
    # "redis": redis-py's pipeline (what a cluster or rediss:// uses).
    on_wire = request.param == "wire"
    made = RedisDecisionStore(
        Redis(host="127.0.0.1", port=server.port),
        KeyLayout(prefix=PREFIX, shards=SHARDS),
        wire=wire_of(server.port) if on_wire else None,
        events_wire=wire_of(server.port) if on_wire else None,
    )
    yield made
    await made.close()


async def decided(store: RedisDecisionStore, users: int, each: int) -> None:
    for i in range(users):
        for _ in range(each):
            who = Subject(f"user-{i}", "openai")
            await store.decide(DecisionRequest(uuid.uuid4().hex, who, BUCKET, 1, T0))


async def one_by_one(store: RedisDecisionStore, limit: int = 100) -> list[list[StoredEvent]]:
    return [await store.read_events(s, "", limit) for s in range(SHARDS)]


async def test_every_shard_read_in_one_call_is_what_each_read_alone_gives(
    store: RedisDecisionStore,
) -> None:
    await decided(store, users=12, each=3)
    alone = await one_by_one(store)
    assert sum(1 for found in alone if found) >= 2  # the users spread over several shards
    assert sum(len(found) for found in alone) == 36
    assert await store.read_events_batch(list(range(SHARDS)), 100) == alone
    # A subset, in the order asked, each shard cut at the limit.
    picked = [5, 0, 3]
    limited = await store.read_events_batch(picked, 2)
    assert limited == [alone[s][:2] for s in picked]


async def test_every_shard_acknowledged_in_one_call_trims_each_up_to_its_position(
    store: RedisDecisionStore,
) -> None:
    await decided(store, users=12, each=3)
    alone = await one_by_one(store)
    acks = [(s, found[1].position) for s, found in enumerate(alone) if len(found) > 1]
    assert await store.ack_events_batch(acks) == [2] * len(acks)
    acked = {s for s, _ in acks}
    expected = [found[2:] if s in acked else found for s, found in enumerate(alone)]
    assert await one_by_one(store) == expected
    assert await store.ack_events_batch(acks) == [0] * len(acks)  # a repeated ack trims nothing


async def test_a_shard_redis_cannot_read_fails_alone(
    store: RedisDecisionStore, server: RedisServer
) -> None:
    await decided(store, users=3, each=1)  # at most three of the eight shards hold events
    alone = await one_by_one(store)
    bad = next(s for s, found in enumerate(alone) if not found)
    async with Redis(host="127.0.0.1", port=server.port) as admin:
        await admin.set(f"{PREFIX}{{{bad}}}:ev", "not a stream")
    found = await store.read_events_batch(list(range(SHARDS)), 100)
    assert isinstance(found[bad], rx.ResponseError)
    assert "WRONGTYPE" in str(found[bad])
    assert [f for s, f in enumerate(found) if s != bad] == [
        f for s, f in enumerate(alone) if s != bad
    ]
    good = (bad + 1) % SHARDS
    trimmed = await store.ack_events_batch([(bad, "1-0"), (good, "1-0")])
    assert isinstance(trimmed[0], rx.ResponseError)
    assert trimmed[1] == 0


async def test_an_unreachable_redis_fails_the_whole_call_as_unavailable(
    store: RedisDecisionStore, server: RedisServer
) -> None:
    await decided(store, users=2, each=1)
    server.stop()
    with pytest.raises(StoreUnavailableError):
        await store.read_events_batch(list(range(SHARDS)), 100)
    with pytest.raises(StoreUnavailableError):
        await store.ack_events_batch([(0, "1-0")])


async def test_the_relay_reads_on_a_connection_of_its_own(server: RedisServer) -> None:
    decisions, events = wire_of(server.port), wire_of(server.port)
    made = RedisDecisionStore(
        Redis(host="127.0.0.1", port=server.port),
        KeyLayout(prefix=PREFIX, shards=SHARDS),
        wire=decisions,
        events_wire=events,
    )
    try:
        await made.read_events_batch(list(range(SHARDS)), 10)
        await made.ack_events_batch([(0, "1-0")])
        assert (decisions.connects, events.connects) == (0, 1)
        await decided(made, users=1, each=1)
        assert (decisions.connects, events.connects) == (1, 1)
    finally:
        await made.close()


async def test_a_cluster_reads_and_trims_every_shard_in_one_call(tmp_path: Path) -> None:
    # redis-py's cluster pipeline: the shards' streams live on different nodes.
    with redis_cluster(tmp_path / "cluster") as ports:
        made = RedisDecisionStore(
            RedisCluster(host="127.0.0.1", port=ports[0]), KeyLayout(prefix=PREFIX, shards=SHARDS)
        )
        try:
            await made.load_scripts()
            await decided(made, users=12, each=2)
            alone = await one_by_one(made)
            assert sum(len(found) for found in alone) == 24
            assert await made.read_events_batch(list(range(SHARDS)), 100) == alone
            acks = [(s, found[0].position) for s, found in enumerate(alone) if found]
            assert await made.ack_events_batch(acks) == [1] * len(acks)
            assert await one_by_one(made) == [found[1:] for found in alone]
        finally:
            await made.close()
