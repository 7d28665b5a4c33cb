"""A purchase saga on the real stack: a token service (saga_runner=external) and the real saga
worker subprocess on a database, topic, consumer group and Redis key prefix of their own."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky.token.v1 import token_pb2 as pb
from leaky_tokens.stack.kafka import Kafka
from leaky_tokens.stack.orchestrator import Stack
from leaky_tokens.stack.postgres import Postgres
from leaky_tokens.stack.redis import Redis
from leaky_tokens.token.adapters.saga_settings import REAL_PARTS
from leaky_tokens.token.domain.units import SAFE_LIMIT
from tests.integration.test_saga_worker import Worker
from tests.support.fakes import FakeClock
from tests.support.stack import component
from tests.support.token_service import TokenHarness, token_service
from tests.support.wait import eventually

DELIVERY = 90.0  # a bound on waiting, never asserted on
PARTITIONS = 3  # the worker creates its topic with this many (topic_partitions)
TERMINAL = (pb.PURCHASE_STATUS_COMPLETED, pb.PURCHASE_STATUS_FAILED)
LAST = ("purchase_completed", "purchase_failed")


class WallClock(FakeClock):
    """The token service's clock follows the wall clock: the worker's recovery compares the
    sagas' timestamps with its own system clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class Lane:
    """The token service and the worker of one saga lane."""

    h: TokenHarness
    worker: Worker
    database_url: str

    async def buy(self, user: str, tokens: int, key: str = "") -> pb.TokenPurchase:
        request = pb.PurchaseRequest(
            user_id=user, provider="openai", tokens=tokens, idempotency_key=key
        )
        return await self.h.stub.Purchase(request, metadata=self.h.auth(user))

    async def get(self, saga_id: str, user: str) -> pb.TokenPurchase:
        request = pb.GetPurchaseRequest(saga_id=saga_id)
        return await self.h.stub.GetPurchase(request, metadata=self.h.auth(user))

    async def balance(self, user: str) -> int:
        request = pb.GetQuotaRequest(user_id=user, provider="openai")
        quota = await self.h.stub.GetQuota(request, metadata=self.h.auth(user))
        return int(quota.purchased_balance)

    async def settled(self, saga_id: str, user: str) -> pb.TokenPurchase:
        """The purchase once terminal and its last event on the topic (relayed after it)."""

        async def done() -> pb.TokenPurchase | None:
            self.worker.alive()
            got = await self.get(saga_id, user)
            return got if got.status in TERMINAL else None

        found = await eventually(done, DELIVERY, what=f"purchase {saga_id} terminal")
        assert found is not None

        async def last_published() -> bool:
            return any(c in LAST for c in (await self.counts(saga_id)))

        await eventually(last_published, DELIVERY, what=f"{saga_id}'s last event on the topic")
        return found

    async def events(self) -> list[EventEnvelope]:
        """Every envelope on the lane's topic, copies included."""
        return await read_topic(self.worker.bootstrap, self.worker.topic)

    async def counts(self, saga_id: str) -> Counter[str]:
        """The saga's events on the topic per type, de-duplicated by event_id."""
        return distinct(await self.events(), saga_id)


def distinct(envelopes: list[EventEnvelope], saga_id: str) -> Counter[str]:
    """Per event type, how many distinct event_ids the saga has among `envelopes`."""
    ids = {e.event_id: str(e.WhichOneof("event")) for e in envelopes if e.correlation_id == saga_id}
    return Counter(ids.values())


async def read_topic(bootstrap: str, topic: str) -> list[EventEnvelope]:
    """Every record of `topic` from the beginning to its current end, decoded."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        out: list[EventEnvelope] = []
        while [p for p in parts if await consumer.position(p) < end[p]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    envelope = EventEnvelope()
                    envelope.ParseFromString(record.value)
                    out.append(envelope)
        return out
    finally:
        await consumer.stop()


@asynccontextmanager
async def fresh_database(stack: Stack) -> AsyncIterator[str]:
    """A PostgreSQL database of its own: no other runner drains its outbox or recovers it."""
    postgres = component(stack, "postgres")
    assert isinstance(postgres, Postgres)
    dsn = f"host=127.0.0.1 port={postgres.port} user=postgres dbname=postgres"
    name = f"leaky_test_saga_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield postgres.url(name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@asynccontextmanager
async def saga_lane(
    stack: Stack, root: Path, env: dict[str, str] | None = None, *, start: bool = True
) -> AsyncIterator[Lane]:
    """A token service recording purchases and the real worker running them (started and
    SERVING unless `start` is false); `env` adds LEAKY_TOKEN_* settings of the worker.

    `root` must exist (the test's tmp_path).
    """
    kafka, redis = component(stack, "kafka"), component(stack, "redis")
    assert isinstance(kafka, Kafka)
    assert isinstance(redis, Redis)
    worker = Worker(kafka.address, root)
    prefix = f"s{uuid.uuid4().hex[:8]}"  # the lane's Redis keys
    async with fresh_database(stack) as url, token_service(
        root, clock=WallClock(), saga_runner="external", saga_topic=worker.topic,
        database_url=url, max_request_tokens=SAFE_LIMIT, store_backend="redis",
        store_redis_url=redis.url, store_key_prefix=prefix, store_timeout_ms=2000,
    ) as h:  # fmt: skip
        # The worker reads the token service's own settings: the same database and balances.
        worker.extra.update(
            {
                "LEAKY_TOKEN_SAGA_PARTS_FACTORY": REAL_PARTS,
                "LEAKY_TOKEN_DATABASE_URL": url,
                "LEAKY_TOKEN_POLICY_FILE": str(h.policy_path),
                "LEAKY_TOKEN_STORE_BACKEND": "redis",
                "LEAKY_TOKEN_STORE_REDIS_URL": redis.url,
                "LEAKY_TOKEN_STORE_KEY_PREFIX": prefix,
                "LEAKY_TOKEN_STORE_TIMEOUT_MS": "2000",
                "LEAKY_TOKEN_SAGA_PAYMENT_LATENCY_MS": "0",
                **(env or {}),
            }
        )
        try:
            if start:
                worker.start()
                await worker.serving()
            yield Lane(h, worker, url)
        finally:
            worker.stop()
