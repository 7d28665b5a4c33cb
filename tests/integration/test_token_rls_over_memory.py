"""ShouldRateLimit's counter remembers a plan refused with every hit over its limit until the
first of its windows ends, answering it again without Redis (ADR 0046), on a private Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from leaky_tokens.token.adapters.redis_rate_counter import RedisRequestCounter
from leaky_tokens.token.adapters.redis_wire import Endpoint, RedisWire
from leaky_tokens.token.domain.rate_counter import CounterHit, CountStep
from tests.support.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.integration

MINUTE = 60_000
T0 = 1_767_225_600_000 + 5_000  # 5 s into a minute


def per_minute(key: str, limit: int, enforced: bool = True) -> CounterHit:
    return CounterHit(f"leaky.{key}", limit, MINUTE, 1, enforced)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as started:
        yield started


@pytest.fixture
async def admin(server: RedisServer) -> AsyncIterator[Redis]:
    async with Redis(host="127.0.0.1", port=server.port) as client:
        yield client


@pytest.fixture
async def counter(server: RedisServer) -> AsyncIterator[RedisRequestCounter]:
    wire = RedisWire(Endpoint(port=server.port), timeout_s=2.0, connect_timeout_s=2.0)
    made = RedisRequestCounter(wire, "t")
    yield made
    await made.close()


async def scripts(admin: Redis) -> int:
    stats = await admin.info("commandstats")
    return sum(int(stats.get(k, {}).get("calls", 0)) for k in ("cmdstat_evalsha", "cmdstat_eval"))


def shape(step: CountStep) -> list[tuple[bool, int, int, int]]:
    return [(w.within, w.after.count, w.remaining, w.reset_after_ms) for w in step.hits]


async def test_a_refusal_over_every_limit_is_answered_again_without_redis_until_the_window_ends(
    counter: RedisRequestCounter, admin: Redis
) -> None:
    plan = (per_minute("k", 2),)
    for _ in range(2):
        assert (await counter.hit(plan, T0)).admitted
    refused = await counter.hit(plan, T0)
    assert not refused.admitted
    sent = await scripts(admin)
    again = await counter.hit(plan, T0 + 10_000)
    assert await scripts(admin) == sent  # from memory
    assert not again.admitted
    assert shape(again) == [(False, 2, 0, MINUTE - 15_000)]  # the reset counts down
    # Redis, asked the same, answers the same (nothing was counted meanwhile).
    fresh = await counter.hit((per_minute("k", 2),), T0 + 10_000)
    assert shape(fresh) == shape(again)
    assert await admin.get("trl:{leaky}k_1767225600") == b"2"
    # The next window goes to Redis again and starts from zero.
    nxt = await counter.hit(plan, T0 + MINUTE)
    assert nxt.admitted
    assert shape(nxt) == [(True, 1, 1, MINUTE - 5_000)]


async def test_a_refusal_with_a_hit_still_within_its_limit_is_asked_again(
    counter: RedisRequestCounter, admin: Redis
) -> None:
    plan = (per_minute("full", 1), per_minute("roomy", 100))
    assert (await counter.hit(plan, T0)).admitted
    assert not (await counter.hit(plan, T0)).admitted
    sent = await scripts(admin)
    step = await counter.hit(plan, T0)
    assert await scripts(admin) == sent + 1
    assert shape(step)[1] == (True, 1, 99, MINUTE - 5_000)  # roomy's count, read now


async def test_a_shadow_hit_over_its_limit_is_never_remembered(
    counter: RedisRequestCounter, admin: Redis
) -> None:
    plan = (per_minute("shadow", 1, enforced=False),)
    for _ in range(3):
        assert (await counter.hit(plan, T0)).admitted
    sent = await scripts(admin)
    assert (await counter.hit(plan, T0)).admitted
    assert await scripts(admin) == sent + 1
    assert await admin.get("trl:{leaky}shadow_1767225600") == b"4"


async def test_another_plan_of_the_same_counter_and_a_clock_stepped_back_ask_redis(
    counter: RedisRequestCounter, admin: Redis
) -> None:
    plan = (per_minute("k", 1),)
    assert (await counter.hit(plan, T0)).admitted
    assert not (await counter.hit(plan, T0)).admitted
    sent = await scripts(admin)
    # A reload that raised the limit makes new plans (new hits tuples): asked, admitted.
    raised = (per_minute("k", 5),)
    assert (await counter.hit(raised, T0)).admitted
    assert await scripts(admin) == sent + 1
    # The old plan, its clock stepped back into the previous window: asked again.
    back = await counter.hit(plan, T0 - MINUTE)
    assert back.admitted
    assert await scripts(admin) == sent + 2


async def test_a_remembered_refusal_holds_while_redis_is_down(server: RedisServer) -> None:
    wire = RedisWire(Endpoint(port=server.port), timeout_s=2.0, connect_timeout_s=0.5)
    counter = RedisRequestCounter(wire, "t")
    try:
        plan = (per_minute("k", 1),)
        await counter.hit(plan, T0)
        assert not (await counter.hit(plan, T0)).admitted
        server.stop()
        assert not (await counter.hit(plan, T0 + 1_000)).admitted  # known over: still refused
    finally:
        await counter.close()
