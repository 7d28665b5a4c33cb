"""The projection worker's settings and its place in the stack (no Kafka, no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from leaky_tokens.analytics.adapters.projection_settings import ProjectionSettings
from leaky_tokens.mesh.plan import MeshPorts, StackTargets, port_plan, service_children
from leaky_tokens.runtime.settings import SettingsError, load
from leaky_tokens.stack.component import StackPaths
from leaky_tokens.stack.registry import default_components
from leaky_tokens.stack.workers import WorkerComponent
from leaky_tokens.topology import WORKERS


def test_defaults_name_the_token_services_topics_and_the_dead_letter_topic() -> None:
    s = ProjectionSettings()
    assert (s.usage_topic, s.purchase_topic) == ("leaky.usage.v1", "leaky.purchase.v1")
    assert s.dead_letter_topic == "leaky.analytics.dead-letter.v1"
    assert (s.store, s.store_factory, s.port) == ("cassandra", "", 50056)


def test_environment_overrides_and_bad_values_are_refused() -> None:
    env = {
        "LEAKY_ANALYTICS_PROJECTION_BATCH_SIZE": "7",
        "LEAKY_ANALYTICS_PROJECTION_STORE": "sqlite",
    }
    loaded = load(ProjectionSettings, "LEAKY_ANALYTICS_PROJECTION", env)
    assert (loaded.batch_size, loaded.store) == (7, "sqlite")
    for bad, match in [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_window_ms": -1}, "batch_window_ms"),
        ({"retry_backoff_ms": 500, "retry_backoff_max_ms": 100}, "retry_backoff_max_ms"),
        ({"store": "mysql"}, "store"),
        ({"store_factory": "no_colon"}, "store_factory"),
        ({"dead_letter_topic": "leaky.usage.v1"}, "must differ"),
        ({"group": " "}, "group"),
    ]:
        with pytest.raises(SettingsError, match=match):
            ProjectionSettings(**bad)  # type: ignore[arg-type]


def test_the_stack_runs_the_projection_on_its_kafka_and_cassandra(tmp_path: Path) -> None:
    (worker,) = [w for w in WORKERS if w.name == "analytics-projection"]
    assert (worker.within, worker.health_port) == ("analytics", 50056)
    components = {c.name: c for c in default_components()}
    projection, saga = components["analytics-projection"], components["token-saga"]
    assert isinstance(projection, WorkerComponent)
    assert isinstance(saga, WorkerComponent)
    env = projection.launch(StackPaths(tmp_path, tmp_path)).env
    assert env["LEAKY_ANALYTICS_PROJECTION_KAFKA_BOOTSTRAP"] == components["kafka"].address
    assert env["LEAKY_ANALYTICS_PROJECTION_STORE"] == "cassandra"
    host, port = components["cassandra"].address.rsplit(":", 1)
    assert (env["LEAKY_ANALYTICS_CASSANDRA_HOSTS"], env["LEAKY_ANALYTICS_CASSANDRA_PORT"]) == (
        host,
        port,
    )
    assert env["LEAKY_ANALYTICS_PROJECTION_PORT"] == "18101"
    saga_env = saga.launch(StackPaths(tmp_path, tmp_path)).env
    assert not any("CASSANDRA" in name for name in saga_env)


def test_the_stack_gives_the_projection_its_own_metrics_port(tmp_path: Path) -> None:
    components = {c.name: c for c in default_components()}
    env = components["analytics-projection"].launch(StackPaths(tmp_path, tmp_path)).env
    assert env["LEAKY_ANALYTICS_PROJECTION_METRICS_PORT"] == "18102"


def test_leaky_up_stack_moves_the_projection_ports_with_the_bases(tmp_path: Path) -> None:
    targets = StackTargets(
        "127.0.0.1:8500", "127.0.0.1:8080", kafka_bootstrap="127.0.0.1:9092",
        cassandra="127.0.0.1:9042",
    )  # fmt: skip
    ports = MeshPorts.from_bases(8080, 9901, 51050, 9201)
    native = {c.name: c for c in service_children(ports, tmp_path, targets)}
    projection = native["analytics-projection"]
    assert projection.argv[1:] == ["-m", "leaky_tokens.analytics.projection_worker"]
    assert projection.address == "127.0.0.1:51056"
    assert projection.env["LEAKY_ANALYTICS_PROJECTION_METRICS_PORT"] == "9206"
    assert projection.metrics == "http://127.0.0.1:9206/metrics"
    assert projection.env["LEAKY_ANALYTICS_PROJECTION_STORE"] == "cassandra"
    assert projection.env["LEAKY_ANALYTICS_CASSANDRA_HOSTS"] == "127.0.0.1"
    assert projection.env["LEAKY_ANALYTICS_CASSANDRA_PORT"] == "9042"
    assert native["analytics"].env["LEAKY_ANALYTICS_STORE"] == "cassandra"  # reads it too
    assert "LEAKY_ANALYTICS_PROJECTION_KAFKA_BOOTSTRAP" in projection.env
    assert native["token-saga"].env["LEAKY_TOKEN_SAGA_METRICS_PORT"] == "9205"  # ADR 0040
    planned = {u.port for u in port_plan(ports, embedded=False)}
    assert {51056, 9206} <= planned
    off = MeshPorts.from_bases(8080, 9901, 51050, 0)
    native_off = {c.name: c for c in service_children(off, tmp_path, targets)}
    assert native_off["analytics-projection"].env["LEAKY_ANALYTICS_PROJECTION_METRICS_PORT"] == "0"
