"""The analytics projection worker as integration tests run it: a subprocess on a test's own
topics and group (`Worker`), over a store the test can read (`StoreUnderTest`: the stack's
Cassandra in a fresh keyspace, or the SQLite-file double), and the events they feed it with
the brute-force answers to compare the store with."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky_tokens.analytics.adapters.cassandra_usage_store import CassandraUsageStore
from leaky_tokens.analytics.domain.facts import UsageFact
from leaky_tokens.analytics.domain.ports import Scope, UsageStore, scopes_of
from leaky_tokens.analytics.domain.totals import Totals
from leaky_tokens.analytics.domain.windows import RESOLUTIONS, Resolution
from tests.support import worker_process
from tests.support.cassandra_store import store_settings
from tests.support.net import free_port
from tests.support.usage_store_double import STORE_PATH_ENV, SqliteRecordingStore
from tests.support.wait import eventually

DELIVERY = 90.0  # a bound on waiting, never asserted on
BASE_MS = 1_764_633_600_000  # 2025-12-02T00:00Z: events spread over two days from here
PROVIDERS = ("openai", "anthropic")


@dataclass
class StoreUnderTest:
    """What the worker needs to open the store (env), how the test reads it, and how to
    take it down and bring it back."""

    env: dict[str, str]
    reader: Callable[[], UsageStore]
    down: Callable[[], None]
    up: Callable[[], None]


def sqlite_double(root: Path) -> StoreUnderTest:
    """tests/support's SQLite-file double under `root`; down/up flip its outage flag."""
    path = root / "usage.sqlite"
    SqliteRecordingStore(path)  # creates the tables before two processes race to
    flag = path.with_name(path.name + ".down")
    return StoreUnderTest(
        env={
            "LEAKY_ANALYTICS_PROJECTION_STORE_FACTORY": (
                "tests.support.usage_store_double:store_from_env"
            ),
            STORE_PATH_ENV: str(path),
        },
        reader=lambda: SqliteRecordingStore(path),
        down=flag.touch,
        up=lambda: flag.unlink(missing_ok=True),
    )


def cassandra_real(port: int, keyspace: str, *, worker_port: int | None = None) -> StoreUnderTest:
    """The Cassandra store on 127.0.0.1:`port` in `keyspace`; the worker connects to
    `worker_port` instead when given (a proxy in front of the node), the reader directly."""

    def cannot() -> None:
        raise NotImplementedError("the shared Cassandra is not taken down by tests")

    settings = store_settings(port, keyspace)
    return StoreUnderTest(
        env={
            "LEAKY_ANALYTICS_PROJECTION_STORE_FACTORY": (
                "tests.support.usage_store_double:cassandra_from_env"
            ),
            "LEAKY_ANALYTICS_CASSANDRA_HOSTS": "127.0.0.1",
            "LEAKY_ANALYTICS_CASSANDRA_PORT": str(worker_port or port),
            "LEAKY_ANALYTICS_CASSANDRA_KEYSPACE": keyspace,
        },
        reader=lambda: CassandraUsageStore(settings),
        down=cannot,
        up=cannot,
    )


@dataclass
class Worker:
    """One test's topics and group; starts projection worker subprocesses on them."""

    bootstrap: str
    root: Path
    store: StoreUnderTest
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def group(self) -> str:
        return f"projection-test-{self.tag}"

    @property
    def usage_topic(self) -> str:
        return f"leaky.usage.test.{self.tag}"

    @property
    def purchase_topic(self) -> str:
        return f"leaky.purchase.test.{self.tag}"

    @property
    def dead_letter_topic(self) -> str:
        return f"leaky.analytics.dead-letter.test.{self.tag}"

    def start(self) -> None:
        prefix = "LEAKY_ANALYTICS_PROJECTION"
        env = {
            **os.environ,
            "LEAKY_DATA_DIR": str(self.root / "data"),
            f"{prefix}_KAFKA_BOOTSTRAP": self.bootstrap,
            f"{prefix}_USAGE_TOPIC": self.usage_topic,
            f"{prefix}_PURCHASE_TOPIC": self.purchase_topic,
            f"{prefix}_DEAD_LETTER_TOPIC": self.dead_letter_topic,
            f"{prefix}_GROUP": self.group,
            f"{prefix}_PORT": str(self.port),
            f"{prefix}_METRICS_PORT": str(self.metrics_port),
            f"{prefix}_BATCH_SIZE": "50",
            f"{prefix}_BATCH_WINDOW_MS": "50",
            f"{prefix}_RETRY_BACKOFF_MS": "20",
            f"{prefix}_RETRY_BACKOFF_MAX_MS": "200",
            f"{prefix}_COMMIT_INTERVAL_MS": "200",
            f"{prefix}_HEALTH_INTERVAL_MS": "100",
            f"{prefix}_SESSION_TIMEOUT_MS": "6000",  # the killed worker's lapses soon
            **self.store.env,
        }
        self.process = worker_process.launch(
            "leaky_tokens.analytics.projection_worker", env, self.root
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        process, self.process = self.process, None
        return worker_process.stop(process, sig)

    @property
    def log(self) -> Path:
        return self.root / "worker.log"

    def log_mark(self) -> int:
        """Where the log ends now: `records(since=...)` reads what comes after."""
        return self.log.stat().st_size if self.log.exists() else 0

    def records(self, since: int = 0) -> list[dict[str, Any]]:
        """The worker's JSON log records written after `since` (other lines skipped)."""
        with self.log.open("rb") as text:
            text.seek(since)
            lines = text.read().splitlines()
        found = []
        for line in lines:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    found.append(record)
        return found

    def alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(
                f"worker exited {self.process.returncode}:\n{worker_process.log_tail(self.root)}"
            )

    async def health(self, want: int) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def reached() -> bool:
                self.alive()
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                return bool(reply.status == want)

            name = health_pb2.HealthCheckResponse.ServingStatus.Name(want)
            await eventually(reached, DELIVERY, what=f"worker {name}", ignoring=(grpc.RpcError,))

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as reply:
            text = reply.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples


def usage_event(i: int) -> EventEnvelope:
    """Event i: users u0..u6, orgs on some, both providers, consumes and reserves (some
    denied), refunds and releases; spread over two days, several per minute."""
    envelope = EventEnvelope(event_id=f"use-{i}", partition_key=f"user:u{i % 7}")
    envelope.occurred_at.FromMilliseconds(BASE_MS + i * 41_357)
    common = {
        "user_id": f"u{i % 7}",
        "org_id": f"o{i % 3}" if i % 7 < 4 else "",
        "provider": PROVIDERS[i % 2],
    }
    body: Any
    match i % 5:
        case 0 | 1:
            body = envelope.token_usage_recorded
            body.tokens, body.allowed = 10 + i % 17, i % 4 != 0
        case 2:
            body = envelope.tokens_reserved
            body.tokens, body.allowed = 100 + i % 5, i % 3 != 0
        case 3:
            body = envelope.tokens_refunded
            body.tokens = i % 9
        case _:
            body = envelope.reservation_released
            body.released_tokens = i % 11
    for key, value in common.items():
        setattr(body, key, value)
    return envelope


def purchase_event(i: int) -> EventEnvelope:
    envelope = EventEnvelope(event_id=f"buy-{i}", partition_key=f"user:u{i % 3}")
    envelope.occurred_at.FromMilliseconds(BASE_MS + i * 1_000)
    done = envelope.purchase_completed if i % 2 else envelope.purchase_failed
    done.saga_id, done.user_id, done.provider, done.tokens = f"s{i}", f"u{i % 3}", "openai", 500
    return envelope


@asynccontextmanager
async def producing(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer (acks from all replicas), stopped on exit."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The offsets `group` has committed on `topic`, by partition (none: absent)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in found.items() if tp.topic == topic}


async def publish(
    producer: AIOKafkaProducer, topic: str, envelopes: list[EventEnvelope]
) -> list[Any]:
    """Send each envelope keyed by its partition key; their RecordMetadata once all are
    acknowledged (`.partition`, `.offset`)."""
    sent = [
        await producer.send(topic, value=e.SerializeToString(), key=e.partition_key.encode())
        for e in envelopes
    ]
    return [await delivery for delivery in sent]


def expected_buckets(facts: list[UsageFact]) -> dict[tuple[Scope, str, Resolution, int], Totals]:
    """Brute force: every (scope, provider, resolution, bucket) the facts fall in."""
    found: dict[tuple[Scope, str, Resolution, int], Totals] = {}
    for fact in facts:
        for scope in scopes_of(fact):
            for resolution in RESOLUTIONS:
                key = (scope, fact.provider, resolution, resolution.floor(fact.occurred_at_ms))
                found.setdefault(key, Totals()).add(fact)
    return found


async def decisions(store: UsageStore) -> list[UsageFact]:
    """Every decision fact stored, through the port (a duplicate would be a second row)."""
    found: list[UsageFact] = []
    for provider in PROVIDERS:
        found += await store.latest(Scope.everyone(), provider, 1_000_000)
    return found


def by_id(facts: list[UsageFact]) -> list[UsageFact]:
    return sorted(facts, key=lambda f: f.event_id)


async def assert_rollups(reader: UsageStore, facts: list[UsageFact]) -> None:
    """Every (scope, provider, resolution) bucket the facts fall in holds exactly their
    brute-force totals (give-backs included)."""
    wanted = expected_buckets(facts)
    queries: dict[tuple[Scope, str, Resolution], list[int]] = {}
    for scope, provider, resolution, start in wanted:
        queries.setdefault((scope, provider, resolution), []).append(start)
    for (scope, provider, resolution), starts in queries.items():
        got = await reader.buckets(scope, provider, resolution, starts)
        assert dict(got) == {s: wanted[(scope, provider, resolution, s)] for s in starts}
