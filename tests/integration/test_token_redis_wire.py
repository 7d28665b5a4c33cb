"""RedisWire against a private redis-server (killed and restarted, busy, full, locked) and a
server that never answers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis import exceptions as rx
from redis.asyncio import Redis

from leaky_tokens.token.adapters.key_layout import KeyLayout
from leaky_tokens.token.adapters.redis_decision_store import RedisDecisionStore
from leaky_tokens.token.adapters.redis_rate_counter import RedisRequestCounter
from leaky_tokens.token.adapters.redis_wire import Endpoint, RedisWire
from leaky_tokens.token.adapters.resilient_decision_store import ResilientDecisionStore
from leaky_tokens.token.adapters.settings import FailureMode, TokenStoreSettings
from leaky_tokens.token.adapters.store_factory import redis_counter, redis_store
from leaky_tokens.token.domain.bucket import BucketLimit
from leaky_tokens.token.domain.decision import Allowed, Level
from leaky_tokens.token.domain.policy import LevelLimits
from leaky_tokens.token.domain.ports import DecisionRequest, StoreUnavailableError, Subject
from leaky_tokens.token.domain.rate_counter import CounterHit
from tests.support.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000 + 5_000
ALICE = Subject("alice", "openai")
BUCKET = LevelLimits({Level.USER_BUCKET: BucketLimit.tokens(100, 1000)}, {})


def hit(key: str = "k", limit: int = 100) -> CounterHit:
    return CounterHit(f"leaky.{key}", limit, 60_000, 1, True)


def ask(tokens: int = 5) -> DecisionRequest:
    return DecisionRequest(uuid.uuid4().hex, ALICE, BUCKET, tokens, T0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path, "--busy-reply-threshold", "20") as started:
        yield started


@pytest.fixture
async def admin(server: RedisServer) -> AsyncIterator[Redis]:
    async with Redis(host="127.0.0.1", port=server.port) as client:
        yield client


def wire_of(port: int, timeout_s: float = 2.0, **endpoint: object) -> RedisWire:
    return RedisWire(Endpoint(port=port, **endpoint), timeout_s=timeout_s, connect_timeout_s=2.0)  # type: ignore[arg-type]


async def answers_busy(client: Redis) -> bool:
    try:
        await client.ping()
    except rx.ResponseError as error:
        return str(error).startswith("BUSY")
    return False


async def evals(admin: Redis) -> int:
    stats = await admin.info("commandstats")
    return int(stats.get("cmdstat_eval", {}).get("calls", 0))


async def test_a_killed_redis_is_unavailable_then_reconnected_and_scripts_sent_again(
    server: RedisServer,
) -> None:
    wire = wire_of(server.port)
    counter = RedisRequestCounter(wire, "t")
    store = RedisDecisionStore(
        Redis(host="127.0.0.1", port=server.port), KeyLayout(shards=4), wire=wire_of(server.port)
    )
    try:
        assert (await counter.hit([hit()], T0)).hits[0].after.count == 1
        assert isinstance((await store.decide(ask())).result, Allowed)
        server.stop()
        with pytest.raises(StoreUnavailableError):
            await counter.hit([hit()], T0)
        with pytest.raises(StoreUnavailableError):
            await store.decide(ask())
        server.start()  # empty: no keys, no cached scripts (EVALSHA answers NOSCRIPT)
        async with Redis(host="127.0.0.1", port=server.port) as admin:
            assert await evals(admin) == 0
            assert (await counter.hit([hit()], T0)).hits[0].after.count == 1
            made = await store.decide(ask())
            assert isinstance(made.result, Allowed)
            assert await evals(admin) == 2  # one EVAL each, after NOSCRIPT
            assert (await counter.hit([hit()], T0)).hits[0].after.count == 2
            assert await evals(admin) == 2  # cached again: EVALSHA
        assert wire.connects == 2
    finally:
        await counter.close()
        await store.close()


async def test_a_silent_server_times_out_and_the_next_call_reconnects() -> None:
    accepted: list[asyncio.StreamWriter] = []
    dropped = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        while await reader.read(4096):  # reads every command, answers none
            pass
        dropped.set()  # the client gave the connection up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    counter = RedisRequestCounter(wire_of(port, timeout_s=0.2), "t")
    try:
        with pytest.raises(StoreUnavailableError, match="no reply within 200 ms"):
            await counter.hit([hit()], T0)
        await dropped.wait()
        with pytest.raises(StoreUnavailableError, match="no reply within 200 ms"):
            await counter.hit([hit()], T0)
        assert len(accepted) == 2
    finally:
        await counter.close()
        server.close()
        await server.wait_closed()


async def test_a_busy_script_is_unavailable(server: RedisServer, admin: Redis) -> None:
    counter = RedisRequestCounter(wire_of(server.port), "t")
    await counter.hit([hit()], T0)
    async with Redis(host="127.0.0.1", port=server.port) as looping:
        spin = asyncio.ensure_future(looping.eval("while true do end", 0))
        try:
            for _ in range(500):  # until the loop runs past busy-reply-threshold
                if await answers_busy(admin):
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("the script never ran past busy-reply-threshold")
            with pytest.raises(StoreUnavailableError, match="BUSY"):
                await counter.hit([hit()], T0)
        finally:
            await admin.script_kill()
            with pytest.raises(rx.ResponseError, match="killed"):
                await spin
            await counter.close()


async def test_a_full_redis_is_unavailable_and_counts_nothing(admin: Redis) -> None:
    port = admin.connection_pool.connection_kwargs["port"]
    counter = RedisRequestCounter(wire_of(port), "t")
    try:
        await counter.hit([hit("other")], T0)  # the script is cached
        await admin.config_set("maxmemory", "1")
        batch = [counter.hit([hit("a")], T0), counter.hit([hit("b")], T0)]
        failed = await asyncio.gather(*batch, return_exceptions=True)
        assert all(isinstance(f, StoreUnavailableError) and "maxmemory" in str(f) for f in failed)
        await admin.config_set("maxmemory", "0")
        after = await asyncio.gather(counter.hit([hit("a")], T0), counter.hit([hit("b")], T0))
        assert [s.hits[0].after.count for s in after] == [1, 1]
    finally:
        await counter.close()


async def test_a_password_and_a_database_from_the_url(tmp_path: Path) -> None:
    with redis_server(tmp_path, "--requirepass", "s3cret") as locked:
        url = f"redis://:s3cret@127.0.0.1:{locked.port}/3"
        settings = TokenStoreSettings(store_backend="redis", store_redis_url=url)
        counter = redis_counter(settings)
        wrong = redis_counter(
            TokenStoreSettings(store_backend="redis", store_redis_url=url.replace("s3cret", "x"))
        )
        try:
            await counter.hit([hit()], T0)
            async with Redis(host="127.0.0.1", port=locked.port, password="s3cret", db=3) as db3:
                assert len(await db3.keys("ltrl:*")) == 1
            with pytest.raises(StoreUnavailableError):
                await wrong.hit([hit()], T0)
        finally:
            await counter.close()
            await wrong.close()


async def test_fail_closed_refuses_and_local_emergency_decides_while_redis_is_down(
    server: RedisServer,
) -> None:
    settings = TokenStoreSettings(
        store_backend="redis", store_redis_url=f"redis://127.0.0.1:{server.port}/0"
    )
    primaries = [redis_store(settings), redis_store(settings)]  # as the bootstrap builds them
    closed = ResilientDecisionStore(
        primaries[0], FailureMode.FAIL_CLOSED, timeout_s=1.0, recovery_s=60.0
    )
    emergency = ResilientDecisionStore(
        primaries[1], FailureMode.LOCAL_EMERGENCY, timeout_s=1.0, recovery_s=60.0
    )
    try:
        assert isinstance((await closed.decide(ask())).result, Allowed)
        server.stop()
        with pytest.raises(StoreUnavailableError):
            await closed.decide(ask())
        assert isinstance((await emergency.decide(ask())).result, Allowed)
        assert closed.degraded
        assert emergency.degraded
    finally:
        for primary in primaries:
            await primary.close()


def test_the_services_event_loop_uvloop_drives_the_wire(server: RedisServer) -> None:
    """The services run on uvloop (ADR 0027), whose transports are not asyncio's classes."""
    import uvloop

    async def counted() -> int:
        counter = RedisRequestCounter(wire_of(server.port), "uv")
        try:
            step = await counter.hit([hit("uvloop", limit=10)], T0)
            return step.hits[0].remaining
        finally:
            await counter.close()

    assert uvloop.run(counted()) == 9


def test_a_reply_already_arrived_when_a_late_loop_fires_the_timeout_is_taken(
    server: RedisServer,
) -> None:
    """uvloop runs due timers before it reads sockets: a loop that ran late (a busy box) must
    still read a reply that arrived in time instead of failing the batch as timed out."""
    import socket
    import time

    import uvloop

    ping = b"*1\r\n$4\r\nPING\r\n"

    async def late() -> list[object]:
        wire = wire_of(server.port, timeout_s=0.05)
        try:
            await wire.execute(ping, 1)  # connected

            # Another socket's callback stalls the loop in the poll phase that did not see the
            # reply yet; the reply lands meanwhile, and the next turn runs the due timer first.
            ours, theirs = socket.socketpair()
            loop = asyncio.get_running_loop()

            def stall() -> None:
                ours.recv(1)
                time.sleep(0.3)

            loop.add_reader(ours.fileno(), stall)
            try:
                theirs.send(b"x")  # ready at once: the next poll sees it, not the reply
                return await wire.execute(ping, 1)
            finally:
                loop.remove_reader(ours.fileno())
                ours.close()
                theirs.close()
        finally:
            await wire.close()

    assert uvloop.run(late()) == [b"PONG"]
