"""Each stack component is the real thing: a real protocol round trip against every server."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import faust
import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from cassandra.cluster import Cluster
from sqlalchemy.ext.asyncio import create_async_engine

from leaky_tokens.stack.orchestrator import Stack
from tests.support.stack import component

pytestmark = pytest.mark.integration

LEAKY_LUA = """
local level = tonumber(redis.call('GET', KEYS[1]) or '0')
local add = tonumber(ARGV[1])
if level + add > tonumber(ARGV[2]) then return {0, level} end
redis.call('SET', KEYS[1], level + add)
return {1, level + add}
"""


def test_every_component_reports_healthy(stack: Stack) -> None:
    rows = stack.status()
    assert {r.name: r.state for r in rows} == {c.name: "healthy" for c in stack.components}
    assert all(r.pid for r in rows)


async def test_redis_runs_lua_atomically(stack: Stack) -> None:
    client = aioredis.Redis(host="127.0.0.1", port=component(stack, "redis").port)  # type: ignore[attr-defined]
    key = f"smoke:{uuid.uuid4().hex}"
    script = client.register_script(LEAKY_LUA)
    try:
        results = await asyncio.gather(*(script(keys=[key], args=[3, 10]) for _ in range(5)))
        assert sorted(int(allowed) for allowed, _ in results) == [0, 0, 1, 1, 1]
        assert await client.get(key) == b"9"
    finally:
        await client.delete(key)
        await client.aclose()


async def test_postgres_through_sqlalchemy(postgres_url: str) -> None:
    engine = create_async_engine(postgres_url)
    try:
        async with engine.begin() as conn:
            version = (await conn.execute(sa.text("SHOW server_version"))).scalar_one()
            await conn.execute(sa.text("CREATE TEMP TABLE t (n int)"))
            await conn.execute(sa.text("INSERT INTO t VALUES (1), (2)"))
            total = (await conn.execute(sa.text("SELECT sum(n) FROM t"))).scalar_one()
        assert total == 3
        assert int(str(version).split(".")[0]) >= 15
    finally:
        await engine.dispose()


def _bootstrap(stack: Stack) -> str:
    return str(component(stack, "kafka").address)


async def _create_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def test_kafka_produce_and_consume_with_aiokafka(stack: Stack) -> None:
    bootstrap, topic = _bootstrap(stack), f"smoke-{uuid.uuid4().hex[:8]}"
    await _create_topic(bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for n in range(5):
            await producer.send_and_wait(topic, f"event-{n}".encode(), key=b"tenant-1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"g-{topic}", auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        received: list[str] = []
        async with asyncio.timeout(30):
            while len(received) < 5:
                batch = await consumer.getmany(timeout_ms=1000)
                received += [m.value.decode() for msgs in batch.values() for m in msgs]
    finally:
        await consumer.stop()
    assert received == [f"event-{n}" for n in range(5)]


async def test_faust_agent_consumes_from_the_broker(stack: Stack, tmp_path: Path) -> None:
    bootstrap = _bootstrap(stack)
    app = faust.App(
        f"leaky-smoke-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_partitions=1,
        datadir=str(tmp_path),  # not the working directory
    )
    topic = app.topic(f"smoke-{uuid.uuid4().hex[:8]}", value_serializer="raw")
    await _create_topic(bootstrap, topic.get_topic_name())
    seen: list[bytes] = []
    all_seen = asyncio.Event()

    @app.agent(topic)
    async def collect(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            seen.append(value)
            if len(seen) == 3:
                all_seen.set()

    await app.start()
    try:
        for n in range(3):
            await topic.send(value=f"m{n}".encode())
        await asyncio.wait_for(all_seen.wait(), 60)
    finally:
        await app.stop()
    assert seen == [b"m0", b"m1", b"m2"]


def test_cassandra_keyspace_insert_and_select(stack: Stack) -> None:
    cassandra = component(stack, "cassandra")
    cluster = Cluster(["127.0.0.1"], port=cassandra.port, connect_timeout=10)  # type: ignore[attr-defined]
    session = cluster.connect()
    table = f"smoke_{uuid.uuid4().hex[:8]}"
    try:
        keyspaces = {
            row.keyspace_name
            for row in session.execute("SELECT keyspace_name FROM system_schema.keyspaces")
        }
        assert "leaky_analytics" in keyspaces
        session.execute(
            f"CREATE TABLE leaky_analytics.{table} (provider text, ts timeuuid, tokens bigint,"
            " PRIMARY KEY (provider, ts))"
        )
        for tokens in (5, 7):
            session.execute(
                f"INSERT INTO leaky_analytics.{table} (provider, ts, tokens) VALUES "
                "('openai', now(), %s)",
                (tokens,),
            )
        rows = session.execute(
            f"SELECT tokens FROM leaky_analytics.{table} WHERE provider = 'openai'"
        )
        assert sorted(r.tokens for r in rows) == [5, 7]
    finally:
        session.execute(f"DROP TABLE IF EXISTS leaky_analytics.{table}")
        cluster.shutdown()
