"""RequestCounterStore contract: in memory, on the stack's Redis (the fast wire and redis-py)
and on a 3-node Redis Cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from leaky_tokens.stack.orchestrator import Stack
from leaky_tokens.stack.redis import Redis as RedisComponent
from leaky_tokens.token.adapters.in_memory_rate_counter import InMemoryRequestCounter
from leaky_tokens.token.adapters.redis_rate_counter import RedisRequestCounter
from leaky_tokens.token.adapters.redis_wire import Endpoint, RedisWire
from leaky_tokens.token.domain.ports import StoreUnavailableError
from leaky_tokens.token.domain.rate_counter import CounterHit, RequestCounterStore
from tests.support.net import free_port
from tests.support.redis_cluster import redis_cluster
from tests.support.stack import component

pytestmark = pytest.mark.integration

MINUTE = 60_000
T0 = 1_767_225_600_000 + 5_000  # 5 s into a minute (and a day): windows are epoch-aligned


def per_minute(key: str, limit: int, hits: int = 1, enforced: bool = True) -> CounterHit:
    return CounterHit(f"leaky.{key}", limit, MINUTE, hits, enforced)


@pytest.fixture(scope="session")
def cluster_ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as ports:
        yield ports


@pytest.fixture(params=["memory", "wire", "redis", "cluster"])
async def counter(request: pytest.FixtureRequest) -> AsyncIterator[RequestCounterStore]:
    if request.param == "memory":
        yield InMemoryRequestCounter()
        return
    client: Redis | RedisCluster
    if request.param in ("wire", "redis"):
        stack: Stack = request.getfixturevalue("stack")
        redis = component(stack, "redis")
        assert isinstance(redis, RedisComponent)
        port = redis.port
        client = Redis(host="127.0.0.1", port=port)
    else:
        ports: list[int] = request.getfixturevalue("cluster_ports")
        client = RedisCluster(host="127.0.0.1", port=ports[0])
    prefix = f"t{uuid.uuid4().hex[:10]}"  # the stack's Redis is shared: no flushing
    if request.param == "wire":  # the single-Redis default: RedisWire, one script per batch
        wire = RedisWire(Endpoint(port=port), timeout_s=5.0, connect_timeout_s=5.0)
        real = RedisRequestCounter(wire, prefix)
    else:
        real = RedisRequestCounter(client, prefix)
    yield real
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        await client.delete(key)
    await real.close()
    if request.param == "wire":
        await client.aclose()


async def test_counts_up_to_the_limit_then_refuses_without_counting(
    counter: RequestCounterStore,
) -> None:
    for n in range(1, 4):
        step = await counter.hit([per_minute("user_id_a", 3)], T0)
        assert step.admitted
        assert (step.hits[0].after.count, step.hits[0].remaining) == (n, 3 - n)
        assert step.hits[0].reset_after_ms == 55_000
    refused = await counter.hit([per_minute("user_id_a", 3)], T0 + 1000)
    assert not refused.admitted
    assert not refused.hits[0].within
    assert (refused.hits[0].after.count, refused.hits[0].remaining) == (3, 0)


async def test_all_or_nothing_across_descriptors(counter: RequestCounterStore) -> None:
    await counter.hit([per_minute("k_full", 1)], T0)
    both = [per_minute("k_free", 10), per_minute("k_full", 1)]
    refused = await counter.hit(both, T0)
    assert not refused.admitted
    assert [h.within for h in refused.hits] == [True, False]
    alone = await counter.hit([per_minute("k_free", 10)], T0)
    assert alone.hits[0].after.count == 1  # the refused request counted nothing


async def test_requests_sharing_a_batch_are_each_all_or_nothing(
    counter: RequestCounterStore,
) -> None:
    await counter.hit([per_minute("m_full", 1)], T0)
    refused, alone, counted = await asyncio.gather(  # one batch (one script call on the wire)
        counter.hit([per_minute("m_free", 10), per_minute("m_full", 1)], T0),
        counter.hit([per_minute("m_free", 10)], T0),
        counter.hit([per_minute("m_free", 10, hits=2), per_minute("m_other", 5)], T0),
    )
    assert not refused.admitted
    assert (alone.admitted, alone.hits[0].after.count) == (True, 1)
    assert [h.after.count for h in counted.hits] == [3, 1]


async def test_hits_addend_and_repeated_counters_add_up(counter: RequestCounterStore) -> None:
    step = await counter.hit([per_minute("h", 10, hits=4), per_minute("h", 10, hits=5)], T0)
    assert step.admitted
    assert [h.after.count for h in step.hits] == [4, 9]
    over = await counter.hit([per_minute("h", 10, hits=2)], T0)
    assert not over.admitted
    assert over.hits[0].after.count == 9


async def test_shadow_hits_are_counted_past_the_limit_and_refuse_nothing(
    counter: RequestCounterStore,
) -> None:
    for _ in range(3):
        step = await counter.hit([per_minute("s", 2, enforced=False)], T0)
        assert step.admitted
    assert not step.hits[0].within
    assert (step.hits[0].after.count, step.hits[0].remaining) == (3, 0)


async def test_a_new_window_starts_from_zero(counter: RequestCounterStore) -> None:
    await counter.hit([per_minute("w", 1)], T0)
    assert not (await counter.hit([per_minute("w", 1)], T0 + 54_999)).admitted
    nxt = await counter.hit([per_minute("w", 1)], T0 + 55_000)
    assert nxt.admitted
    assert nxt.hits[0].after.window_start_ms == T0 - 5_000 + MINUTE
    assert nxt.hits[0].reset_after_ms == MINUTE


async def test_concurrent_requests_never_exceed_the_limit(counter: RequestCounterStore) -> None:
    steps = await asyncio.gather(*(counter.hit([per_minute("c", 25)], T0) for _ in range(60)))
    assert sum(s.admitted for s in steps) == 25


@pytest.mark.parametrize("counter", ["wire", "redis", "cluster"], indirect=True)
async def test_concurrent_requests_share_pipelines(counter: RequestCounterStore) -> None:
    assert isinstance(counter, RedisRequestCounter)
    before = counter.batches_sent
    await asyncio.gather(*(counter.hit([per_minute(f"b{i}", 5)], T0) for i in range(40)))
    assert counter.batches_sent - before < 40


@pytest.mark.parametrize("counter", ["wire", "redis"], indirect=True)
async def test_keys_follow_upstreams_layout_and_expire_with_their_window(
    counter: RequestCounterStore, stack: Stack
) -> None:
    assert isinstance(counter, RedisRequestCounter)
    hit = per_minute("user_id_x", 5)
    await counter.hit([hit], T0)
    key = counter.key(hit, T0)
    assert key.endswith(f"{{leaky}}user_id_x_{(T0 - 5_000) // 1000}")
    redis = component(stack, "redis")
    assert isinstance(redis, RedisComponent)
    async with Redis(host="127.0.0.1", port=redis.port) as admin:
        ttl = await admin.ttl(key)  # what Redis holds is the contract
    assert 0 < ttl <= 56


async def test_an_unreachable_redis_is_store_unavailable() -> None:
    client = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    down = RedisRequestCounter(client, "t")
    with pytest.raises(StoreUnavailableError):
        await down.hit([per_minute("d", 1)], T0)
    await down.close()
    wire = RedisWire(Endpoint(port=free_port()), timeout_s=0.5, connect_timeout_s=0.5)
    down = RedisRequestCounter(wire, "t")
    with pytest.raises(StoreUnavailableError):
        await down.hit([per_minute("d", 1)], T0)
    await down.close()
