"""The saga worker's pieces without Kafka: retry-until-handled, the health verdict, its
settings and factory loading, and where `leaky up --stack` and `leaky stack` run it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky_tokens.mesh.plan import MeshPorts, StackTargets, port_plan, service_children
from leaky_tokens.runtime.faust_worker import ConsumerState, HealthReporter, verdict
from leaky_tokens.runtime.settings import SettingsError, load
from leaky_tokens.stack.component import StackPaths
from leaky_tokens.stack.registry import default_components
from leaky_tokens.stack.workers import WorkerComponent
from leaky_tokens.token.adapters.faust_saga import HandleWatch, handle_until_done
from leaky_tokens.token.adapters.saga_settings import SagaWorkerSettings
from leaky_tokens.token.saga_worker import build_parts, load_factory
from tests.support.wait import eventually

HEALTHY = ConsumerState(running=True, joined=True, rebalancing=False)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Flaky:
    """Raises `times` times, then handles."""

    name = "flaky"

    def __init__(self, times: int) -> None:
        self.times = times
        self.calls = 0

    async def handle(self, envelope: EventEnvelope) -> None:
        self.calls += 1
        if self.calls <= self.times:
            raise RuntimeError("not yet")


async def test_a_failing_handle_is_retried_until_it_succeeds() -> None:
    participant, watch = Flaky(times=4), HandleWatch()
    with watch.handling("flaky", "e-1") as flight:
        await handle_until_done(participant, EventEnvelope(event_id="e-1"), flight, 0.001, 0.004)
    assert participant.calls == 5
    assert flight.attempts == 5


async def test_only_cancellation_ends_a_handle_that_keeps_failing() -> None:
    participant, watch = Flaky(times=10**9), HandleWatch()
    with watch.handling("flaky", "e-1") as flight:
        task = asyncio.create_task(
            handle_until_done(participant, EventEnvelope(event_id="e-1"), flight, 0.001, 0.001)
        )
        await eventually(lambda: participant.calls >= 3, 10, what="three failed attempts")
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert watch.stuck(0.0) == {}  # no longer in flight once the handle ended


def test_the_verdict_names_what_is_wrong() -> None:
    clock = Clock()
    watch = HandleWatch(clock)
    assert verdict(HEALTHY, watch, 0.0, 5.0) == ""
    assert "not running" in verdict(ConsumerState(False, True, False), watch, 0.0, 5.0)
    assert "not joined" in verdict(ConsumerState(True, False, False), watch, 0.0, 5.0)
    rebalancing = ConsumerState(True, True, True)
    assert verdict(rebalancing, watch, 4.0, 5.0) == ""  # a rebalance takes a moment
    assert "rebalancing" in verdict(rebalancing, watch, 6.0, 5.0)
    with watch.handling("payment", "e-9"):
        clock.now += 4.0
        assert verdict(HEALTHY, watch, 0.0, 5.0) == ""
        clock.now += 2.0
        assert "payment has been handling e-9" in verdict(HEALTHY, watch, 0.0, 5.0)
    assert verdict(HEALTHY, watch, 0.0, 5.0) == ""


async def test_the_reporter_flips_the_server_health_and_back() -> None:
    clock, health = Clock(), health_aio.HealthServicer()
    watch = HandleWatch(clock)
    reporter = HealthReporter(
        health,
        lambda: HEALTHY,
        watch,
        label="saga worker",
        stuck_after_s=1.0,
        interval_s=1.0,
        monotonic=clock,
    )

    async def status() -> int:
        request = health_pb2.HealthCheckRequest()
        return (await health.Check(request, None)).status  # type: ignore[no-any-return]

    assert await reporter.evaluate() == ""
    assert await status() == health_pb2.HealthCheckResponse.SERVING
    with watch.handling("allocation", "e-1"):
        clock.now += 2.0
        assert "allocation" in await reporter.evaluate()
        assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await reporter.evaluate() == ""
    assert await status() == health_pb2.HealthCheckResponse.SERVING


def test_settings_refuse_what_cannot_work() -> None:
    with pytest.raises(SettingsError, match="stuck_after_ms"):
        SagaWorkerSettings(stuck_after_ms=0)
    with pytest.raises(SettingsError, match="retry_backoff_max_ms"):
        SagaWorkerSettings(retry_backoff_ms=500, retry_backoff_max_ms=100)
    with pytest.raises(SettingsError, match="parts_factory"):
        SagaWorkerSettings(parts_factory="no_colon")
    loaded = load(SagaWorkerSettings, "LEAKY_TOKEN_SAGA", {"LEAKY_TOKEN_SAGA_TOPIC": "t", "X": "y"})
    assert loaded.topic == "t"


async def test_the_factory_setting_resolves_or_says_why_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(SettingsError, match="cannot load"):
        load_factory("leaky_tokens.nowhere:build")
    with pytest.raises(SettingsError, match="not callable"):
        load_factory("leaky_tokens.token.saga_worker:ENV_PREFIX")
    # The default is the saga's real factory: it refuses a store the token service cannot share.
    monkeypatch.setenv("LEAKY_TOKEN_STORE_BACKEND", "memory")
    with pytest.raises(SettingsError, match="store_backend"):
        await build_parts(load_factory(SagaWorkerSettings().parts_factory))


def test_leaky_up_runs_the_worker_only_against_the_stack(tmp_path: Path) -> None:
    ports = MeshPorts.from_bases(8080, 9901, 51050, 0)
    targets = StackTargets("127.0.0.1:8500", "127.0.0.1:8080", kafka_bootstrap="127.0.0.1:9092")
    embedded = {c.name: c for c in service_children(ports, tmp_path)}
    assert "token-saga" not in embedded
    assert "LEAKY_TOKEN_SAGA_RUNNER" not in embedded["token"].env  # the saga runs in-process
    native = {c.name: c for c in service_children(ports, tmp_path, targets)}
    worker = native["token-saga"]
    # With the worker beside it, the token service only records purchases (the worker runs them).
    assert native["token"].env["LEAKY_TOKEN_SAGA_RUNNER"] == "external"
    assert worker.argv[1:] == ["-m", "leaky_tokens.token.saga_worker"]
    assert worker.address == "127.0.0.1:51055"  # moved with --grpc-base-port
    assert worker.env["LEAKY_TOKEN_SAGA_KAFKA_BOOTSTRAP"] == "127.0.0.1:9092"
    assert worker.env["LEAKY_TOKEN_SAGA_CONSUL_ADDRESS"] == "127.0.0.1:8500"
    assert worker.env["LEAKY_TOKEN_EVENTS_BUS"] == "kafka"  # the token service's settings too
    assert 51055 in {u.port for u in port_plan(ports, embedded=False)}
    assert 51055 not in {u.port for u in port_plan(ports)}


def test_the_stack_starts_the_workers_last_and_tests_can_leave_them_out(tmp_path: Path) -> None:
    components = default_components()
    saga, projection = components[-2:]
    assert isinstance(saga, WorkerComponent)
    assert isinstance(projection, WorkerComponent)
    assert saga.name == "token-saga"
    assert saga.address == "127.0.0.1:18100"
    assert projection.name == "analytics-projection"
    assert projection.address == "127.0.0.1:18101"
    launch = saga.launch(StackPaths(tmp_path, tmp_path))
    assert launch.env["LEAKY_TOKEN_SAGA_METRICS_PORT"] == "18103"  # its /metrics (ADR 0040)
    names = {c.name for c in default_components(workers=False)}
    assert not names & {"token-saga", "analytics-projection"}
