"""The Faust saga worker against the stack's real Kafka and Consul, with test participants
(tests/support/saga_doubles.py): every event reaches every participant at least once,
through failures, a SIGKILL and the outbox; a stuck participant turns Consul's check critical."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import consul
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from leaky.events.v1.events_pb2 import EventEnvelope, PurchaseRequested
from leaky_tokens.stack.component import StackPaths
from leaky_tokens.stack.kafka import Kafka
from leaky_tokens.stack.orchestrator import Stack
from leaky_tokens.stack.registry import default_components
from leaky_tokens.stack.workers import WorkerComponent
from leaky_tokens.token.adapters.kafka_event_bus import KafkaEventBus
from leaky_tokens.token.adapters.saga_contract import OutboxRecord
from tests.support import worker_process
from tests.support.net import free_port
from tests.support.saga_doubles import lines, write_outbox
from tests.support.stack import component
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DELIVERY = 90.0  # a bound on waiting, never asserted on


@dataclass
class Worker:
    """One test's topic, group and record directory; starts worker subprocesses on them."""

    bootstrap: str
    root: Path
    topic: str = field(default_factory=lambda: f"leaky.purchase.test.{uuid.uuid4().hex[:10]}")
    group: str = field(default_factory=lambda: f"saga-test-{uuid.uuid4().hex[:10]}")
    port: int = field(default_factory=free_port)
    extra: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "LEAKY_DATA_DIR": str(self.root / "data"),
            "LEAKY_TOKEN_SAGA_KAFKA_BOOTSTRAP": self.bootstrap,
            "LEAKY_TOKEN_SAGA_TOPIC": self.topic,
            "LEAKY_TOKEN_SAGA_GROUP": self.group,
            "LEAKY_TOKEN_SAGA_PORT": str(self.port),
            "LEAKY_TOKEN_SAGA_PARTS_FACTORY": "tests.support.saga_doubles:parts_from_env",
            "LEAKY_TOKEN_SAGA_RETRY_BACKOFF_MS": "20",
            "LEAKY_TOKEN_SAGA_RETRY_BACKOFF_MAX_MS": "200",
            "LEAKY_TOKEN_SAGA_COMMIT_INTERVAL_MS": "200",
            "LEAKY_TOKEN_SAGA_RECOVERY_INTERVAL_MS": "200",
            "LEAKY_TOKEN_SAGA_OUTBOX_POLL_MS": "50",
            "LEAKY_TOKEN_SAGA_SESSION_TIMEOUT_MS": "6000",  # the killed worker's lapses soon
            "LEAKY_TEST_SAGA_DIR": str(self.root),
            **self.extra,
        }
        self.process = worker_process.launch("leaky_tokens.token.saga_worker", env, self.root)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        process, self.process = self.process, None
        return worker_process.stop(process, sig)

    async def serving(self) -> None:
        """Wait until its health says SERVING: topic created, consumer joined its group."""
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def up() -> bool:
                self.alive()
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

            await eventually(up, DELIVERY, what="worker SERVING", ignoring=(grpc.aio.AioRpcError,))

    def alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"worker exited {self.process.returncode}:\n{self.log_tail()}")

    def handled(self, participant: str) -> list[str]:
        return lines(self.root / f"{participant}.handled")

    def log_tail(self) -> str:
        return worker_process.log_tail(self.root)


@pytest.fixture
def worker(stack: Stack, tmp_path: Path) -> Iterator[Worker]:
    kafka = component(stack, "kafka")
    assert isinstance(kafka, Kafka)
    running = Worker(kafka.address, tmp_path)
    try:
        yield running
    finally:
        running.stop()


def envelopes(prefix: str, n: int, keys: int = 5) -> list[EventEnvelope]:
    """n purchase events over `keys` sagas (partition keys), ids `<prefix>-<i>`."""
    return [
        EventEnvelope(
            event_id=f"{prefix}-{i}",
            partition_key=f"user:u{i % keys}",
            source="test",
            purchase_requested=PurchaseRequested(saga_id=f"s{i % keys}"),
        )
        for i in range(n)
    ]


async def publish(worker: Worker, batch: list[EventEnvelope]) -> None:
    bus = KafkaEventBus(worker.bootstrap, client_id="saga-worker-test")
    try:
        await bus.publish(worker.topic, batch)
    finally:
        await bus.close()


async def all_handled(worker: Worker, participant: str, ids: set[str]) -> None:
    def done() -> bool:
        worker.alive()
        return ids <= set(worker.handled(participant))

    await eventually(done, DELIVERY, what=f"{participant} handled {len(ids)} events")


async def test_every_participant_handles_every_event_and_failures_are_retried_not_skipped(
    worker: Worker,
) -> None:
    worker.extra["LEAKY_TEST_SAGA_FAIL"] = "beta=3"
    # Half the events come through the worker's outbox relay, half straight to the topic.
    direct = envelopes("ev", 40) + envelopes("fail", 3)
    through_outbox = envelopes("ob", 20)
    write_outbox(
        worker.root, [OutboxRecord(i + 1, worker.topic, e) for i, e in enumerate(through_outbox)]
    )
    worker.start()
    await worker.serving()
    await publish(worker, direct)
    ids = {e.event_id for e in direct + through_outbox}
    for participant in ("alpha", "beta"):
        await all_handled(worker, participant, ids)
    # beta raised 3 times on each fail- event, was retried, and then handled it.
    attempts = lines(worker.root / "beta.attempts")
    for i in range(3):
        assert attempts.count(f"fail-{i}") == 4
    assert {f"fail-{i}" for i in range(3)} <= set(worker.handled("beta"))
    assert "fail-0" in worker.handled("alpha")  # alpha never failed: one attempt was enough
    assert lines(worker.root / "alpha.attempts").count("fail-0") == 1
    # The outbox's records were all published and marked, and recovery runs periodically.
    await eventually(
        lambda: (
            sorted(int(s) for s in lines(worker.root / "outbox.published")) == list(range(1, 21))
        ),
        DELIVERY,
        what="outbox records marked published",
    )
    await eventually(
        lambda: len(lines(worker.root / "recovery.calls")) >= 2, DELIVERY, what="recovery passes"
    )
    assert worker.stop() == 0  # SIGTERM: a clean stop


async def test_a_worker_killed_mid_stream_and_restarted_handles_every_event(
    worker: Worker,
) -> None:
    first, second = envelopes("k1", 300), envelopes("k2", 200)
    worker.extra["LEAKY_TEST_SAGA_DELAY_MS"] = "5"  # so the kill lands mid-stream
    worker.start()
    await worker.serving()
    await publish(worker, first)
    await eventually(
        lambda: len(set(worker.handled("alpha"))) >= 50, DELIVERY, what="some events handled"
    )
    worker.stop(signal.SIGKILL)
    assert len(set(worker.handled("alpha"))) < len(first), "meant to die with events unhandled"
    await publish(worker, second)
    worker.start()
    ids = {e.event_id for e in first + second}
    for participant in ("alpha", "beta"):
        await all_handled(worker, participant, ids)
        # At least once: copies allowed (events handled but not committed before the kill).
        assert set(worker.handled(participant)) == ids


async def test_a_second_worker_joining_mid_stream_loses_nothing_in_the_rebalance(
    worker: Worker,
) -> None:
    # The group rebalances while the first worker's beta is held on block-0 (what follows it
    # in beta's stream unacked): partitions move to the newcomer, which handles from the
    # committed offsets on; together they handle everything.
    worker.extra["LEAKY_TEST_SAGA_BLOCKER"] = "beta"
    (worker.root / "second").mkdir()
    second = Worker(
        worker.bootstrap, worker.root / "second", worker.topic, worker.group,
        extra={**worker.extra, "LEAKY_TEST_SAGA_DIR": str(worker.root / "second")},
    )  # fmt: skip
    batch = envelopes("rb", 100) + envelopes("block", 1) + envelopes("ra", 100)
    worker.start()
    await worker.serving()
    await publish(worker, batch)
    try:
        await eventually(
            lambda: "block-0" in lines(worker.root / "beta.attempts"), DELIVERY, what="beta held"
        )
        second.start()
        await second.serving()
        # The newcomer owns partitions now: of events over many keys, it handles its share.
        later = envelopes("post", 60, keys=60)
        await publish(worker, later)
        await eventually(
            lambda: lines(second.root / "alpha.attempts"), DELIVERY, what="partitions moved"
        )
        assert "block-0" not in worker.handled("beta")
        for root in (worker.root, second.root):
            (root / "release").touch()
        ids = {e.event_id for e in batch + later}

        def everything_handled() -> bool:
            worker.alive()
            second.alive()
            return all(
                ids <= set(worker.handled(p)) | set(second.handled(p)) for p in ("alpha", "beta")
            )

        await eventually(everything_handled, DELIVERY, what="every event handled by the two")
    finally:
        second.stop()


def check_status(client: consul.Consul, name: str, port: int) -> str | None:
    _, nodes = client.health.service(name)
    checks = [
        c
        for n in nodes
        if n["Service"]["Port"] == port
        for c in n["Checks"]
        if c.get("ServiceName") == name
    ]
    return checks[0]["Status"] if checks else None


async def test_health_goes_critical_in_consul_while_a_participant_is_stuck(
    worker: Worker, stack: Stack
) -> None:
    consul_port = component(stack, "consul").http_port  # type: ignore[attr-defined]
    client = consul.Consul(host="127.0.0.1", port=consul_port)
    worker.extra.update(
        {
            "LEAKY_TOKEN_SAGA_CONSUL_ADDRESS": f"127.0.0.1:{consul_port}",
            "LEAKY_TOKEN_SAGA_STUCK_AFTER_MS": "1500",
            "LEAKY_TOKEN_SAGA_HEALTH_INTERVAL_MS": "200",
            "LEAKY_TEST_SAGA_BLOCKER": "beta",
        }
    )
    worker.start()

    def status() -> str | None:
        return check_status(client, "token-saga", worker.port)

    await eventually(lambda: status() == "passing", DELIVERY, what="check passing")
    await publish(worker, envelopes("before", 5) + envelopes("block", 1) + envelopes("after", 5))
    await eventually(lambda: status() == "critical", DELIVERY, what="check critical while stuck")
    assert "block-0" not in worker.handled("beta")
    (worker.root / "release").touch()
    await eventually(lambda: status() == "passing", DELIVERY, what="check passing again")
    await all_handled(worker, "beta", {"block-0", *(f"after-{i}" for i in range(5))})
    assert worker.stop() == 0
    # A graceful stop deregisters the instance.
    await eventually(lambda: status() is None, 20, what="deregistered")


async def test_leaky_stack_starts_supervises_and_stops_the_worker(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stack's own component, in a stack directory of this test's (the shared servers
    # stay someone else's), on a topic and group of its own, with the test participants.
    servers = {c.name: c for c in stack.components}
    worker = next(c for c in default_components() if isinstance(c, WorkerComponent))
    component_ = WorkerComponent(
        worker.worker, free_port(), consul=servers["consul"].address,
        kafka=servers["kafka"].address, redis_url="redis://127.0.0.1:1/0",
    )  # fmt: skip
    run = uuid.uuid4().hex[:10]
    for name, value in {
        "LEAKY_TOKEN_SAGA_PARTS_FACTORY": "tests.support.saga_doubles:parts_from_env",
        "LEAKY_TOKEN_SAGA_TOPIC": f"leaky.purchase.test.{run}",
        "LEAKY_TOKEN_SAGA_GROUP": f"saga-test-{run}",
        "LEAKY_TEST_SAGA_DIR": str(tmp_path),
        "PYTHONPATH": str(ROOT),  # the doubles live in tests/
    }.items():
        monkeypatch.setenv(name, value)
    own = Stack([component_], StackPaths(tmp_path / "stack", tmp_path / "cache"), say=print)
    own.up()
    try:
        (row,) = own.status()
        assert row.state == "healthy"  # its gRPC health answers SERVING
        assert row.pid is not None
    finally:
        own.down()
    assert own.status()[0].state == "stopped"
    assert "saga worker running" in own.paths.log(component_.name).read_text()
