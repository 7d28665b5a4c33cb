"""The analytics projection worker against the stack's real Kafka: N events, duplicates and
a SIGKILL in the middle give exactly N facts in the store whose rollups match a brute-force
computation; poison goes to the dead-letter topic with its reason; a store outage turns the
health NOT_SERVING and the projection resumes when the store is back.

The store is the `usage_store` fixture: the stack's real Cassandra (a fresh keyspace per
test), except for the outage test here, which takes tests/support's SQLite-file double down
(honest dedup by event id) to check Consul's view; the real Cassandra store through an outage
(and a Kafka restart) is test_analytics_projection_outages.py's. The worker harness and the
events are tests/support/projection_worker.py's.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import consul
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2

from leaky_tokens.analytics.adapters.dead_letters import (
    REASON,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
)
from leaky_tokens.analytics.adapters.event_facts import fact_of
from leaky_tokens.analytics.domain.facts import UsageFact
from leaky_tokens.analytics.domain.ports import PurchaseTotals, Scope
from leaky_tokens.analytics.projection_worker import SLUG
from leaky_tokens.stack.component import StackPaths
from leaky_tokens.stack.kafka import Kafka
from leaky_tokens.stack.orchestrator import Stack
from leaky_tokens.stack.workers import WorkerComponent
from leaky_tokens.topology import WORKERS
from tests.support.cassandra_store import cassandra_port, drop_keyspace, new_keyspace
from tests.support.net import free_port
from tests.support.projection_worker import (
    DELIVERY,
    PROVIDERS,
    StoreUnderTest,
    Worker,
    assert_rollups,
    by_id,
    cassandra_real,
    decisions,
    publish,
    purchase_event,
    sqlite_double,
    usage_event,
)
from tests.support.stack import component
from tests.support.usage_store_double import STORE_DELAY_ENV, SqliteRecordingStore
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def usage_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest]:
    """The real Cassandra store; parametrize indirectly with "double" for the SQLite double."""
    if getattr(request, "param", "cassandra") == "double":
        yield sqlite_double(tmp_path)
        return
    port = cassandra_port(request.getfixturevalue("stack"))
    keyspace = new_keyspace()
    try:
        yield cassandra_real(port, keyspace)
    finally:
        drop_keyspace(port, keyspace)


@pytest.fixture
def worker(stack: Stack, tmp_path: Path, usage_store: StoreUnderTest) -> Iterator[Worker]:
    kafka = component(stack, "kafka")
    assert isinstance(kafka, Kafka)
    running = Worker(kafka.address, tmp_path, usage_store)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
async def producer(worker: Worker) -> AsyncIterator[AIOKafkaProducer]:
    started = AIOKafkaProducer(bootstrap_servers=worker.bootstrap, acks="all")
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


async def test_n_events_with_duplicates_and_a_kill_in_the_middle_give_exactly_n_facts(
    worker: Worker, producer: AIOKafkaProducer
) -> None:
    n = 600
    events = [usage_event(i) for i in range(n)]
    purchases = [purchase_event(i) for i in range(20)]
    duplicates = events[100:160] + events[500:520]  # the same event ids at new offsets
    expected = [f for f in (fact_of(e) for e in events) if isinstance(f, UsageFact)]
    assert len(expected) == n
    expected_decisions = [f for f in expected if f.kind.is_decision]
    reader = worker.store.reader()
    worker.store.env[STORE_DELAY_ENV] = "200"  # so the kill lands mid-stream

    worker.start()
    await worker.health(health_pb2.HealthCheckResponse.SERVING)
    await publish(producer, worker.usage_topic, events[:300])
    await publish(producer, worker.purchase_topic, purchases)

    async def some() -> bool:
        return len(await decisions(reader)) >= 30

    await eventually(some, DELIVERY, what="some projected")
    worker.stop(signal.SIGKILL)
    assert len(await decisions(reader)) < 180, "meant to die with events not projected"
    await publish(producer, worker.usage_topic, events[300:] + duplicates)
    worker.start()
    await worker.health(health_pb2.HealthCheckResponse.SERVING)

    async def all_projected() -> bool:
        worker.alive()
        done = len(await reader.purchases(Scope.everyone(), 1000)) == len(purchases)
        return done and len(await decisions(reader)) >= len(expected_decisions)

    await eventually(all_projected, DELIVERY, what=f"{n} usage events projected")
    assert by_id(await decisions(reader)) == by_id(expected_decisions)
    # Rollups (give-backs included) equal the brute-force totals, every scope and resolution.
    await assert_rollups(reader, expected)
    assert await reader.providers(Scope.everyone()) == sorted(PROVIDERS)
    assert await reader.purchase_totals(Scope.everyone()) == PurchaseTotals(10, 5000, 10)
    if isinstance(reader, SqliteRecordingStore):  # the double also saw the copies arrive
        assert len(reader.received()) >= n + len(duplicates) + len(purchases)

    samples = worker.metrics()
    usage_label = f'{{topic="{worker.usage_topic}"}}'
    assert samples[f"leaky_analytics_projected_facts_total{usage_label}"] >= n - 300
    assert samples[f"leaky_analytics_projection_lag_seconds{usage_label}"] > 0
    assert samples["leaky_analytics_projection_stalled"] == 0
    assert worker.stop() == 0


async def test_poison_goes_to_the_dead_letter_topic_and_the_projection_goes_on(
    worker: Worker, producer: AIOKafkaProducer
) -> None:
    reader = worker.store.reader()
    worker.start()
    await worker.health(health_pb2.HealthCheckResponse.SERVING)
    no_id = usage_event(1)
    no_id.event_id = ""
    await producer.send_and_wait(worker.usage_topic, b"\xff\x00 not protobuf", partition=0)
    await producer.send_and_wait(worker.usage_topic, no_id.SerializeToString(), partition=0)
    await publish(producer, worker.usage_topic, [usage_event(i) for i in range(10)])

    async def projected() -> bool:
        return len(await decisions(reader)) == 6  # of usage_event(0..9): 0, 1, 2, 5, 6, 7

    await eventually(projected, DELIVERY, what="the good ones projected")
    consumer = AIOKafkaConsumer(
        worker.dead_letter_topic, bootstrap_servers=worker.bootstrap,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    try:
        letters: list[Any] = []
        while len(letters) < 2:
            batch = await consumer.getmany(timeout_ms=int(DELIVERY * 1000), max_records=10)
            assert batch, "no dead letters arrived"
            letters += [record for records in batch.values() for record in records]
    finally:
        await consumer.stop()
    # Without a key each letter may land on any partition: order them by source offset.
    first, second = sorted(letters, key=lambda r: dict(r.headers)[SOURCE_OFFSET])
    assert first.value == b"\xff\x00 not protobuf"
    headers = dict(first.headers)
    assert headers[REASON].startswith(b"not an EventEnvelope")
    assert headers[SOURCE_TOPIC] == worker.usage_topic.encode()
    assert (headers[SOURCE_PARTITION], headers[SOURCE_OFFSET]) == (b"0", b"0")
    assert dict(second.headers)[REASON] == b"event_id is empty"
    assert dict(second.headers)[SOURCE_OFFSET] == b"1"
    usage_label = f'{{topic="{worker.usage_topic}"}}'
    assert worker.metrics()[f"leaky_analytics_dead_letters_total{usage_label}"] == 2


def check_status(client: consul.Consul, port: int) -> str | None:
    _, nodes = client.health.service(SLUG)
    checks = [
        c
        for n in nodes
        if n["Service"]["Port"] == port
        for c in n["Checks"]
        if c.get("ServiceName") == SLUG
    ]
    return str(checks[0]["Status"]) if checks else None


@pytest.mark.parametrize("usage_store", ["double"], indirect=True)
async def test_a_store_outage_stalls_the_projection_and_it_resumes_when_the_store_is_back(
    worker: Worker, producer: AIOKafkaProducer, stack: Stack
) -> None:
    consul_port = component(stack, "consul").http_port  # type: ignore[attr-defined]
    client = consul.Consul(host="127.0.0.1", port=consul_port)
    worker.store.env["LEAKY_ANALYTICS_PROJECTION_CONSUL_ADDRESS"] = f"127.0.0.1:{consul_port}"
    reader = worker.store.reader()
    worker.start()
    await worker.health(health_pb2.HealthCheckResponse.SERVING)

    def status() -> str | None:
        return check_status(client, worker.port)

    await eventually(lambda: status() == "passing", DELIVERY, what="check passing")
    worker.store.down()
    await publish(producer, worker.usage_topic, [usage_event(i) for i in range(30)])

    await worker.health(health_pb2.HealthCheckResponse.NOT_SERVING)
    assert worker.metrics()["leaky_analytics_projection_stalled"] == 1
    await eventually(lambda: status() == "critical", DELIVERY, what="check critical")
    assert await decisions(reader) == []
    worker.store.up()
    await worker.health(health_pb2.HealthCheckResponse.SERVING)

    async def projected() -> bool:
        return len(await decisions(reader)) == 18  # 3 of every 5 are decisions

    await eventually(projected, DELIVERY, what="projected after the outage")
    assert worker.metrics()["leaky_analytics_projection_stalled"] == 0
    await eventually(lambda: status() == "passing", DELIVERY, what="check passing again")
    assert worker.stop() == 0
    await eventually(lambda: status() is None, 20, what="deregistered")  # a graceful stop


async def test_leaky_stack_starts_and_stops_the_projection(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, usage_store: StoreUnderTest
) -> None:
    # The stack's own component, in a stack directory of this test's (the shared servers
    # stay someone else's), on topics and a group of its own, with the test store.
    servers = {c.name: c for c in stack.components}
    (worker,) = [w for w in WORKERS if w.name == SLUG]
    component_ = WorkerComponent(
        worker, free_port(), consul=servers["consul"].address, kafka=servers["kafka"].address,
        redis_url="redis://127.0.0.1:1/0", cassandra=servers["cassandra"].address,
        metrics_port=free_port(),
    )  # fmt: skip
    run = uuid.uuid4().hex[:10]
    prefix = "LEAKY_ANALYTICS_PROJECTION"
    for name, value in {
        **usage_store.env,
        f"{prefix}_USAGE_TOPIC": f"leaky.usage.test.{run}",
        f"{prefix}_PURCHASE_TOPIC": f"leaky.purchase.test.{run}",
        f"{prefix}_DEAD_LETTER_TOPIC": f"leaky.analytics.dead-letter.test.{run}",
        f"{prefix}_GROUP": f"projection-test-{run}",
        "PYTHONPATH": str(ROOT),  # the doubles live in tests/
    }.items():
        monkeypatch.setenv(name, value)
    own = Stack([component_], StackPaths(tmp_path / "stack", tmp_path / "cache"), say=print)
    own.up()
    try:
        (row,) = own.status()
        assert row.state == "healthy"  # its gRPC health answers SERVING
    finally:
        own.down()
    assert own.status()[0].state == "stopped"
    assert "analytics projection running" in own.paths.log(component_.name).read_text()
