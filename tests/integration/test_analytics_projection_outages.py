"""The analytics projection worker rides out a Kafka restart and a Cassandra outage (issue 9:
"the projection pauses and resumes"), against the real servers and its real Cassandra store.

- Kafka: a broker of the test's own (tests/support/own_kafka.py), stopped with events in
  flight and started again; the same worker process goes on and every event lands once.
- Cassandra: the stack's node, behind a TCP proxy the test cuts and restores
  (tests/support/tcp_proxy.py), so the worker's driver loses its connections and has new ones
  refused, as when the node is down, while the shared node stays up for everyone else. The
  projection stalls (health NOT_SERVING), commits no offset past what it wrote, resumes in the
  same process, and a worker killed during the outage loses nothing either. The proxy can
  also hang (hold every byte): requests time out, the batch waits, and the held requests
  reach the node late, with their retries, when it answers again.

Each test has its own keyspace, topics and group; what is stored is compared with a
brute-force computation over the events, and the raw table is also read with plain CQL.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky_tokens.analytics.adapters.event_facts import fact_of
from leaky_tokens.analytics.domain.facts import UsageFact
from leaky_tokens.analytics.domain.ports import UsageStore
from leaky_tokens.stack.kafka import Kafka
from leaky_tokens.stack.orchestrator import Stack
from tests.support import own_kafka
from tests.support.cassandra_store import (
    cassandra_port,
    drop_keyspace,
    new_keyspace,
    raw_event_ids,
)
from tests.support.own_kafka import OwnBroker
from tests.support.projection_worker import (
    DELIVERY,
    Worker,
    assert_rollups,
    by_id,
    cassandra_real,
    committed_offsets,
    decisions,
    producing,
    publish,
    usage_event,
)
from tests.support.stack import component
from tests.support.tcp_proxy import tcp_proxy
from tests.support.usage_store_double import STORE_DELAY_ENV
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
RETRIES = 10  # backoff 20 ms doubling to 200 ms: well over a second of stalled batch


@pytest.fixture
def keyspace(stack: Stack) -> Iterator[tuple[int, str]]:
    """The stack's Cassandra port and a fresh keyspace on it (dropped afterwards)."""
    port = cassandra_port(stack)
    name = new_keyspace()
    try:
        yield port, name
    finally:
        drop_keyspace(port, name)


@pytest.fixture
def own_broker(tmp_path_factory: pytest.TempPathFactory, stack: Stack) -> Iterator[OwnBroker]:
    with own_kafka.own_broker(tmp_path_factory.mktemp("own-kafka")) as broker:
        yield broker


@pytest.fixture
def running() -> Iterator[list[Worker]]:
    """Workers the test starts, stopped (SIGTERM) afterwards if still running."""
    workers: list[Worker] = []
    try:
        yield workers
    finally:
        for worker in workers:
            worker.stop()
            # Shown when the test failed: the worker's own story, without aiokafka's.
            own = [
                r
                for r in worker.records()
                if not str(r.get("logger", "")).startswith(("aiokafka", "alembic"))
            ]
            for record in own[-60:]:
                print(record)


def usage_facts(events: list[EventEnvelope]) -> list[UsageFact]:
    facts = [fact_of(e) for e in events]
    assert all(isinstance(f, UsageFact) for f in facts)
    return facts  # type: ignore[return-value]


def offsets_by_partition(sent: list[Any]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for meta in sent:
        found.setdefault(meta.partition, []).append(meta.offset)
    return found


async def stored_exactly(
    reader: UsageStore, port: int, keyspace: str, events: list[EventEnvelope]
) -> None:
    """The store holds each event once (raw rows read with CQL, decisions through the port)
    and rollups equal to the brute-force totals over them.

    A batch writes its raw rows last (the look-up that makes a replay change nothing, ADR
    0036), after the chunks `decisions` reads: the last batch's raw rows may still be in
    flight when every decision is visible, so they are waited for (a lost one times out)."""
    facts = usage_facts(events)
    wanted = {e.event_id for e in events}

    polls = int(DELIVERY / 0.2)
    raw = await asyncio.to_thread(raw_event_ids, port, keyspace, polls=polls, until=wanted)
    assert sorted(raw) == sorted(wanted)  # every one (a lost one waited for in vain), once
    assert by_id(await decisions(reader)) == by_id([f for f in facts if f.kind.is_decision])
    await assert_rollups(reader, facts)


async def wait_decisions(worker: Worker, reader: UsageStore, count: int, what: str) -> None:
    """Until `count` decisions are stored; fails at once if the worker exited meanwhile."""

    async def reached() -> bool:
        worker.alive()
        return len(await decisions(reader)) >= count

    await eventually(reached, DELIVERY, what=what)


async def stalled(worker: Worker, since: int, retries: int = RETRIES) -> None:
    """NOT_SERVING and stalled 1, and the store call retried `retries` times since the log's
    `since`: commit intervals (200 ms) have passed many times while the batch waited."""
    await worker.health(NOT_SERVING)
    assert worker.metrics()["leaky_analytics_projection_stalled"] == 1

    def retried() -> bool:
        worker.alive()
        return any(
            r.get("msg") == "analytics projection stalled; retrying"
            and r.get("attempt", 0) >= retries
            for r in worker.records(since)
        )

    await eventually(retried, DELIVERY, what=f"{retries} retries of the store call")


async def nothing_committed_past(bootstrap: str, worker: Worker, unwritten: list[Any]) -> None:
    """The worker's group committed no offset of the `unwritten` messages (or later)."""
    committed = await committed_offsets(bootstrap, worker.group, worker.usage_topic)
    for partition, offsets in offsets_by_partition(unwritten).items():
        assert committed.get(partition, 0) <= min(offsets), (partition, committed)


async def test_a_kafka_restart_mid_stream_loses_nothing_and_the_worker_rides_it_out(
    own_broker: OwnBroker, keyspace: tuple[int, str], tmp_path: Path, running: list[Worker]
) -> None:
    port, name = keyspace
    n = 600
    events = [usage_event(i) for i in range(n)]
    first, second = events[:300], events[300:]
    # The same event ids again at new offsets: before the stop, and after the restart (some
    # of those were projected before it, some perhaps only fetched).
    before_copies, after_copies = events[40:90], events[250:300] + events[420:440]
    worker = Worker(own_broker.address, tmp_path, cassandra_real(port, name))
    worker.store.env[STORE_DELAY_ENV] = "300"  # slow batches: the broker stops mid-stream
    running.append(worker)
    reader = worker.store.reader()
    try:
        worker.start()
        await worker.health(SERVING)
        async with producing(own_broker.address) as producer:
            await publish(producer, worker.usage_topic, first + before_copies)
        await wait_decisions(worker, reader, 30, "some projected before the stop")
        assert len(await decisions(reader)) < 180, "meant to stop Kafka with events unprojected"
        mark = worker.log_mark()
        await asyncio.to_thread(own_broker.stop)
        kafka_port = own_broker.kafka.port
        failures = (f"127.0.0.1:{kafka_port}", f"'127.0.0.1', {kafka_port})")

        def noticed() -> bool:  # its Kafka client logged failing to reach the broker
            worker.alive()
            messages = [str(r.get("msg", "")) for r in worker.records(mark)]
            return any(failure in m for m in messages for failure in failures)

        await eventually(noticed, DELIVERY, what="the worker noticing Kafka is gone")
        await asyncio.to_thread(own_broker.start)
        async with producing(own_broker.address) as producer:
            await publish(producer, worker.usage_topic, second + after_copies)
        await wait_decisions(worker, reader, 360, f"{n} events projected after the restart")
        await stored_exactly(reader, port, name, events)
        worker.alive()  # the same process throughout
        assert worker.stop() == 0
    finally:
        await reader.close()


async def test_a_cassandra_outage_pauses_the_projection_commits_nothing_unwritten_and_resumes(
    stack: Stack, keyspace: tuple[int, str], tmp_path: Path, running: list[Worker]
) -> None:
    kafka = component(stack, "kafka")
    assert isinstance(kafka, Kafka)
    port, name = keyspace
    events = [usage_event(i) for i in range(450)]
    with tcp_proxy(port) as proxy:
        worker = Worker(kafka.address, tmp_path, cassandra_real(port, name, worker_port=proxy.port))
        running.append(worker)
        reader = worker.store.reader()  # straight to the node, past the proxy
        topic = worker.usage_topic
        try:
            worker.start()
            await worker.health(SERVING)
            async with producing(kafka.address) as producer:
                await publish(producer, topic, events[:150])
                await wait_decisions(worker, reader, 90, "projected before the outage")
                assert proxy.accepted > 0  # the worker's store does go through the proxy

                # 1. Cassandra goes away: the projection stalls in the same process and
                # resumes when it is back; copies of projected events count once.
                mark = worker.log_mark()
                proxy.cut()
                unwritten = await publish(producer, topic, events[150:300] + events[100:150])
                await stalled(worker, mark)
                assert len(await decisions(reader)) == 90  # nothing more written
                await nothing_committed_past(kafka.address, worker, unwritten)
                proxy.restore()
                await worker.health(SERVING)
                await wait_decisions(worker, reader, 180, "projected after the outage")
                assert worker.metrics()["leaky_analytics_projection_stalled"] == 0

                # 2. Gone again, and the worker is killed while it waits: no offset of an
                # event it did not write was committed, so a new worker projects them.
                mark = worker.log_mark()
                proxy.cut()
                unwritten = await publish(producer, topic, events[300:] + events[200:220])
                await stalled(worker, mark)
                worker.stop(signal.SIGKILL)
                await nothing_committed_past(kafka.address, worker, unwritten)
                assert len(await decisions(reader)) == 180
                proxy.restore()
                worker.start()
                await worker.health(SERVING)
                await wait_decisions(worker, reader, 270, "projected by the new worker")
            await stored_exactly(reader, port, name, events)
            assert worker.stop() == 0
        finally:
            await reader.close()


async def test_a_hanging_cassandra_times_out_stalls_the_projection_and_it_resumes(
    stack: Stack, keyspace: tuple[int, str], tmp_path: Path, running: list[Worker]
) -> None:
    """The node accepts connections and requests but never answers (the proxy holds every
    byte): requests time out, the batch waits with nothing committed, and what was held
    reaches the node late, with the retries, when the proxy forwards again."""
    kafka = component(stack, "kafka")
    assert isinstance(kafka, Kafka)
    port, name = keyspace
    events = [usage_event(i) for i in range(200)]
    with tcp_proxy(port) as proxy:
        store = cassandra_real(port, name, worker_port=proxy.port)
        store.env["LEAKY_ANALYTICS_CASSANDRA_REQUEST_TIMEOUT_MS"] = "1000"
        worker = Worker(kafka.address, tmp_path, store)
        running.append(worker)
        reader = worker.store.reader()
        topic = worker.usage_topic
        try:
            worker.start()
            await worker.health(SERVING)
            async with producing(kafka.address) as producer:
                await publish(producer, topic, events[:100])
                await wait_decisions(worker, reader, 60, "projected before the hang")
                mark = worker.log_mark()
                proxy.freeze()
                unwritten = await publish(producer, topic, events[100:] + events[50:80])
                await stalled(worker, mark, retries=3)
                assert len(await decisions(reader)) == 60
                await nothing_committed_past(kafka.address, worker, unwritten)
                proxy.restore()
                await worker.health(SERVING)
                await wait_decisions(worker, reader, 120, "projected after the hang")
            await stored_exactly(reader, port, name, events)
            worker.alive()
            assert worker.stop() == 0
        finally:
            await reader.close()
