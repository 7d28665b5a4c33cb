"""The usage-event relay against real Redis and Kafka: every recorded decision arrives, through
a relay killed with SIGKILL mid-stream and through a broker that goes down and comes back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky_tokens.stack.kafka import Kafka
from leaky_tokens.stack.orchestrator import Stack
from leaky_tokens.stack.redis import Redis as RedisComponent
from leaky_tokens.token.adapters import event_codec
from leaky_tokens.token.adapters.kafka_event_bus import KafkaEventBus
from leaky_tokens.token.adapters.redis_decision_store import RedisDecisionStore
from leaky_tokens.token.adapters.relay_factory import build_relay
from leaky_tokens.token.adapters.relay_settings import RelaySettings
from leaky_tokens.token.adapters.resilient_decision_store import ResilientDecisionStore
from leaky_tokens.token.adapters.settings import FailureMode, TokenStoreSettings
from leaky_tokens.token.adapters.store_factory import redis_store
from leaky_tokens.token.domain.bucket import BucketLimit
from leaky_tokens.token.domain.decision import Level
from leaky_tokens.token.domain.policy import LevelLimits
from leaky_tokens.token.domain.ports import DecisionRequest, Subject
from tests.support import own_kafka
from tests.support.own_kafka import OwnBroker
from tests.support.stack import component
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_780_000_000_000
LIMITS = LevelLimits({Level.USER_BUCKET: BucketLimit.tokens(1_000_000, 1000)}, {})
TENANTS = [Subject(f"u{i}", "openai", "acme" if i % 3 == 0 else None) for i in range(7)]
DELIVERY = 120.0  # a bound on waiting, never asserted on: failures name what was missing


@dataclass
class Env:
    """One test's own keys and topic in the shared Redis and Kafka."""

    store_settings: TokenStoreSettings
    relay_settings: RelaySettings
    store: RedisDecisionStore
    topic: str

    def variables(self) -> dict[str, str]:
        s, r = self.store_settings, self.relay_settings
        return {
            "LEAKY_TOKEN_STORE_BACKEND": "redis",
            "LEAKY_TOKEN_STORE_REDIS_URL": s.store_redis_url,
            "LEAKY_TOKEN_STORE_KEY_PREFIX": s.store_key_prefix,
            "LEAKY_TOKEN_STORE_SHARDS": str(s.store_shards),
            "LEAKY_TOKEN_EVENTS_BUS": "kafka",
            "LEAKY_TOKEN_EVENTS_KAFKA_BOOTSTRAP": r.events_kafka_bootstrap,
            "LEAKY_TOKEN_EVENTS_USAGE_TOPIC": r.events_usage_topic,
            "LEAKY_TOKEN_EVENTS_BATCH": str(r.events_batch),
            "LEAKY_TOKEN_EVENTS_POLL_MS": "20",
            "LEAKY_TOKEN_EVENTS_LEASE_TTL_MS": "1000",  # a killed relay's lease lapses soon
        }


async def create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()


@pytest.fixture
async def redis_url(stack: Stack) -> str:
    redis = component(stack, "redis")
    assert isinstance(redis, RedisComponent)
    return f"redis://127.0.0.1:{redis.port}/0"


async def make_env(redis_url: str, bootstrap: str) -> Env:
    prefix = f"relay{uuid.uuid4().hex[:10]}"
    store_settings = TokenStoreSettings(
        store_backend="redis", store_redis_url=redis_url, store_key_prefix=prefix,
        store_shards=4, store_timeout_ms=2000,
    )  # fmt: skip
    topic = f"leaky.usage.test.{prefix}"
    relay_settings = RelaySettings(
        events_bus="kafka", events_kafka_bootstrap=bootstrap, events_usage_topic=topic,
        events_batch=25,
        events_poll_ms=20, events_publish_timeout_ms=3000, events_backoff_ms=100,
        events_backoff_max_ms=1000, events_lease_ttl_ms=1000,
    )  # fmt: skip
    await create_topic(bootstrap, topic)
    return Env(store_settings, relay_settings, redis_store(store_settings), topic)


async def drop_keys(env: Env) -> None:
    client = Redis.from_url(env.store_settings.store_redis_url)
    async for key in client.scan_iter(match=f"{env.store_settings.store_key_prefix}*"):
        await client.delete(key)
    await client.aclose()
    await env.store.close()


@pytest.fixture
async def shared(redis_url: str, stack: Stack) -> AsyncIterator[Env]:
    kafka = component(stack, "kafka")
    assert isinstance(kafka, Kafka)
    env = await make_env(redis_url, kafka.address)
    yield env
    await drop_keys(env)


async def record(env: Env, n: int, start: int = 0) -> list[str]:
    """n consume decisions over several tenants (some denied: too large); their event ids."""
    ids = []
    for i in range(start, start + n):
        tokens = 2_000_000 if i % 10 == 9 else 1  # over capacity: a denial, an event too
        request = DecisionRequest(uuid.uuid4().hex, TENANTS[i % len(TENANTS)], LIMITS, tokens,
                                  T0 + i)  # fmt: skip
        outcome = await env.store.decide(request)
        ids.append(outcome.decision_id)  # the allowed/denied event's id (DecisionRequest)
    return ids


async def waiting(env: Env) -> list[str]:
    found = []
    for shard in range(env.store.shard_count):
        found += [s.event.event_id for s in await env.store.read_events(shard, "", 100_000)]
    return found


async def collect(bootstrap: str, topic: str, expected: set[str]) -> list[EventEnvelope]:
    """Every envelope on the topic from the start, until each expected id was seen."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    got: list[EventEnvelope] = []
    try:

        async def all_seen() -> bool:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for message in records:
                    envelope = event_codec.decode(message.value)
                    assert message.key == envelope.partition_key.encode()
                    got.append(envelope)
            return expected <= {e.event_id for e in got}

        await eventually(all_seen, DELIVERY, what=f"{len(expected)} events in {topic}")
    finally:
        await consumer.stop()
    return got


def deduplicated(got: list[EventEnvelope]) -> list[str]:
    """The ids of `got` after de-duplication by event_id, sorted; a repeated id must be a copy
    of the same event (at least once), never another event under a reused id."""
    first: dict[str, EventEnvelope] = {}
    for envelope in got:
        seen = first.setdefault(envelope.event_id, envelope)
        assert seen == envelope, f"two different events share the id {envelope.event_id}"
    return sorted(first)


def start_relay(env: Env, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "leaky_tokens.token.relay_process"],
            env={**os.environ, **env.variables()}, cwd=ROOT, stdout=out, stderr=out,
        )  # fmt: skip


async def test_every_recorded_decision_reaches_kafka_keyed_by_tenant_in_order(
    shared: Env,
) -> None:
    ids = await record(shared, 200)
    recorded = await waiting(shared)
    assert set(recorded) == set(ids)
    # Over the failure policy's store, as the token service relays (its own shard stays empty).
    primary = redis_store(shared.store_settings)
    served = ResilientDecisionStore(primary, FailureMode.FAIL_OPEN, timeout_s=2.0, recovery_s=1.0)
    relay = build_relay(shared.store_settings, shared.relay_settings, served)
    relay.start()
    try:
        got = await collect(shared.relay_settings.events_kafka_bootstrap, shared.topic, set(ids))
        # Relayed, so acknowledged (the ack follows the broker's, a moment after).
        await eventually(lambda: _none_waiting(shared), DELIVERY, what="every event acked")
    finally:
        await relay.stop()
        await primary.close()
    assert deduplicated(got) == sorted(ids)
    # One tenant's events, in the order the store recorded them (first copies; at least once).
    for tenant in {t.tenant for t in TENANTS}:
        mine = [e.event_id for e in got if e.partition_key == tenant]
        firsts = list(dict.fromkeys(mine))
        assert firsts == [i for i in recorded if i in set(firsts)]


async def test_a_relay_killed_mid_stream_loses_nothing(shared: Env, tmp_path: Path) -> None:
    bootstrap = shared.relay_settings.events_kafka_bootstrap
    ids = await record(shared, 300)
    relay = start_relay(shared, tmp_path / "relay.log")
    try:
        # Killed once some events are out and while decisions are still being recorded.
        await collect(bootstrap, shared.topic, set(ids[:50]))
        more = asyncio.create_task(record(shared, 300, start=300))
        await asyncio.sleep(0)
        relay.send_signal(signal.SIGKILL)
        relay.wait(30)
        ids += await more
        assert await waiting(shared), "the relay was meant to die with events still unrelayed"
        relay = start_relay(shared, tmp_path / "relay.log")
        got = await collect(bootstrap, shared.topic, set(ids))
        await eventually(lambda: _none_waiting(shared), DELIVERY, what="every event acked")
    finally:
        relay.kill()
        relay.wait(30)
    assert len(set(ids)) == len(ids)  # every decision recorded its own event
    # Every event arrived; after de-duplication each is there once (copies allowed, no loss).
    assert deduplicated(got) == sorted(ids)


@pytest.fixture
def own_broker(tmp_path_factory: pytest.TempPathFactory, stack: Stack) -> Iterator[OwnBroker]:
    with own_kafka.own_broker(tmp_path_factory.mktemp("own-kafka")) as broker:
        yield broker


async def test_a_kafka_outage_delays_events_and_then_delivers_them_all(
    own_broker: OwnBroker, redis_url: str
) -> None:
    bootstrap = own_broker.kafka.address
    env = await make_env(redis_url, bootstrap)
    registry = CollectorRegistry()
    bus = KafkaEventBus(bootstrap, timeout_s=3.0)
    relay = build_relay(
        env.store_settings, env.relay_settings, env.store, bus, registry=registry,
        now_ms=lambda: T0 + 3_600_000,  # the decisions' clock, an hour on: lag shows
    )  # fmt: skip
    relay.start()
    try:
        before = await record(env, 100)
        await collect(bootstrap, env.topic, set(before))
        await asyncio.to_thread(own_broker.stop)
        during = await record(env, 100, start=100)

        def failures() -> float:
            return (
                registry.get_sample_value(
                    "leaky_token_events_relay_failures_total", {"stage": "publish"}
                )
                or 0.0
            )

        await eventually(lambda: failures() >= 2, DELIVERY, what="publish failures")
        # Nothing recorded during the outage was acknowledged: all of it still waits.
        assert set(during) <= set(await waiting(env))
        lag = registry.get_sample_value("leaky_token_events_relay_lag_seconds")
        assert lag is not None
        assert lag >= 3599  # the oldest waiting event, recorded during the outage at ~T0
        await asyncio.to_thread(own_broker.start)
        got = await collect(bootstrap, env.topic, set(before + during))
        assert deduplicated(got) == sorted(before + during)
        await eventually(lambda: _none_waiting(env), DELIVERY, what="every event acked")
    finally:
        await relay.stop()
        with suppress(Exception):
            await drop_keys(env)


async def _none_waiting(env: Env) -> bool:
    return await waiting(env) == []
