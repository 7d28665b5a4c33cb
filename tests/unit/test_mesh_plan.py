"""`leaky up`'s plan: which ports it checks, what it prints, and --help showing defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from leaky_tokens.cli import build_parser
from leaky_tokens.mesh.plan import (
    Child,
    MeshPorts,
    StackTargets,
    port_conflicts,
    port_plan,
    service_children,
    worker_children,
)
from leaky_tokens.mesh.supervisor import status_table


def test_every_port_of_the_run_is_checked_and_a_taken_one_names_its_flag() -> None:
    ports = MeshPorts.from_bases(8080, 9901, 50050, 9101)
    planned = {use.port for use in port_plan(ports)}
    grpc = {50050, 50051, 50052, 50053, 50054, 50057}  # 50057: ratelimit (ADR 0047)
    assert planned == {8080, 9901, *grpc, 9101, 9102, 9103, 9104, 9107}
    # With the stack, its Envoy owns the gateway: only our services' ports are checked.
    assert 8080 not in {use.port for use in port_plan(ports, embedded=False)}

    problems = port_conflicts(
        port_plan(ports), taken=lambda host, port: "in use" if port == 50051 else None
    )
    assert problems == [
        "port 50051 (auth gRPC) on 127.0.0.1 is in use; "
        "stop that process or move it with --grpc-base-port"
    ]


def test_overlapping_flags_are_refused_before_anything_binds() -> None:
    ports = MeshPorts.from_bases(50051, 9901, 50050, 0)  # gateway on auth's port
    (problem,) = port_conflicts(port_plan(ports), taken=lambda host, port: None)
    assert "port 50051 is planned for both the gateway (Envoy) and auth gRPC" in problem


def test_status_table_shows_metrics_admin_data_directory_and_logs(tmp_path: Path) -> None:
    children = [
        Child("auth", [], {}, tmp_path / "logs/auth.log", "127.0.0.1:50051", "http://m:9101"),
        Child("catalog", [], {}, tmp_path / "logs/catalog.log", "127.0.0.1:50050"),
    ]
    table = status_table(children, "127.0.0.1:8080", admin="127.0.0.1:9901", data_dir=tmp_path)
    assert "http://m:9101" in table
    assert "Envoy admin:        http://127.0.0.1:9901" in table
    assert f"Data directory:     {tmp_path}" in table
    assert f"Logs:               {tmp_path / 'logs'}/<component>.log" in table


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _parsers(child)
    return found


def test_every_help_shows_the_defaults() -> None:
    for parser in _parsers(build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, "==SUPPRESS=="):
                if action.default == "":
                    assert "default" in (action.help or ""), (parser.prog, action.dest)
                    continue
                assert f"(default: {action.default})" in text, (parser.prog, action.dest)


def test_the_token_service_is_told_its_provider_and_with_the_stack_its_redis(
    tmp_path: Path,
) -> None:
    ports = MeshPorts.from_bases(8080, 9901, 41000, 0)
    embedded = {c.name: c for c in service_children(ports, tmp_path)}
    assert embedded["token"].env["LEAKY_TOKEN_PROVIDER_TARGET"] == "127.0.0.1:41004"
    assert "LEAKY_TOKEN_STORE_BACKEND" not in embedded["token"].env  # in-memory
    stack = StackTargets(
        "127.0.0.1:8500",
        "127.0.0.1:8080",
        {"auth": "postgresql+psycopg://x/leaky_auth"},
        redis_url="redis://127.0.0.1:6379/0",
    )
    on_stack = {c.name: c for c in service_children(ports, tmp_path, stack)}
    token = on_stack["token"].env
    assert (token["LEAKY_TOKEN_STORE_BACKEND"], token["LEAKY_TOKEN_STORE_REDIS_URL"]) == (
        "redis",
        "redis://127.0.0.1:6379/0",
    )
    assert on_stack["auth"].env["LEAKY_AUTH_DATABASE_URL"] == "postgresql+psycopg://x/leaky_auth"
    assert "LEAKY_AUTH_STORE_BACKEND" not in on_stack["auth"].env


def test_the_ratelimit_deployment_runs_the_token_service_serving_the_rls_on_its_redis(
    tmp_path: Path,
) -> None:
    # ADR 0047: the token package with SERVE=rls on a port of its own, the token service's
    # other settings (policy, store) from the same environment, and the stack's Redis.
    ports = MeshPorts.from_bases(8080, 9901, 41000, 19101)
    embedded = {c.name: c for c in service_children(ports, tmp_path)}
    rls, token = embedded["ratelimit"], embedded["token"]
    assert rls.argv == token.argv  # python -m leaky_tokens.token
    assert rls.env["LEAKY_TOKEN_SERVE"] == "rls"
    assert "LEAKY_TOKEN_SERVE" not in token.env  # serves everything (and its own RLS)
    assert (rls.env["LEAKY_TOKEN_PORT"], rls.env["LEAKY_TOKEN_METRICS_PORT"]) == ("41007", "19107")
    assert (token.env["LEAKY_TOKEN_PORT"], token.env["LEAKY_TOKEN_METRICS_PORT"]) == (
        "41002",
        "19102",
    )
    assert rls.log_path.name == "ratelimit.log"
    assert "LEAKY_TOKEN_STORE_BACKEND" not in rls.env  # embedded: its own memory (ADR 0047)
    uses = {use.port: use.what for use in port_plan(ports)}
    assert uses[41007] == "ratelimit gRPC"
    stack = StackTargets("127.0.0.1:8500", "127.0.0.1:8080", {}, redis_url="redis://r:6379/0")
    on_stack = {c.name: c for c in service_children(ports, tmp_path, stack)}
    env = on_stack["ratelimit"].env
    token_env = on_stack["token"].env
    assert env["LEAKY_TOKEN_STORE_REDIS_URL"] == token_env["LEAKY_TOKEN_STORE_REDIS_URL"]
    assert env["LEAKY_TOKEN_STORE_BACKEND"] == "redis"
    assert env["LEAKY_TOKEN_CONSUL_ADDRESS"] == "127.0.0.1:8500"
    assert "LEAKY_TOKEN_SAGA_RUNNER" not in env  # the token-saga worker is the token service's


def test_the_saga_worker_gets_a_metrics_port_in_stack_mode_moved_with_the_services(
    tmp_path: Path,
) -> None:
    ports = MeshPorts.from_bases(8080, 9901, 41000, 19101)
    assert ports.worker_metrics == {"token-saga": 19105, "analytics-projection": 19106}
    assert 19105 not in {use.port for use in port_plan(ports)}  # embedded: no worker
    stack_uses = {use.port: use.what for use in port_plan(ports, embedded=False)}
    assert stack_uses[19105] == "token-saga /metrics"
    stack = StackTargets("127.0.0.1:8500", "127.0.0.1:8080", {}, kafka_bootstrap="k:9092")
    saga, _projection = worker_children(ports, service_children(ports, tmp_path, stack), stack)
    assert saga.env["LEAKY_TOKEN_SAGA_METRICS_PORT"] == "19105"
    off = MeshPorts.from_bases(8080, 9901, 41000, 0)  # --metrics-base-port 0: metrics off
    quiet, _ = worker_children(off, service_children(off, tmp_path, stack), stack)
    assert quiet.env["LEAKY_TOKEN_SAGA_METRICS_PORT"] == "0"
    assert all("/metrics" not in use.what for use in port_plan(off, embedded=False))


def test_analytics_reads_the_topics_the_token_service_was_told_to_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A topic renamed for the token service only is the one the embedded tailer and the
    projection worker read; their own variable, when set, wins."""
    monkeypatch.setenv("LEAKY_TOKEN_EVENTS_USAGE_TOPIC", "usage.renamed")
    monkeypatch.setenv("LEAKY_TOKEN_SAGA_TOPIC", "purchase.renamed")
    monkeypatch.setenv("LEAKY_ANALYTICS_PROJECTION_PURCHASE_TOPIC", "purchase.own")
    monkeypatch.delenv("LEAKY_ANALYTICS_USAGE_TOPIC", raising=False)
    monkeypatch.delenv("LEAKY_ANALYTICS_PURCHASE_TOPIC", raising=False)
    monkeypatch.delenv("LEAKY_ANALYTICS_PROJECTION_USAGE_TOPIC", raising=False)
    ports = MeshPorts.from_bases(8080, 9901, 41000, 19101)
    stack = StackTargets("127.0.0.1:8500", "127.0.0.1:8080", {}, kafka_bootstrap="k:9092")
    children = service_children(ports, tmp_path, stack)
    analytics = next(c for c in children if c.name == "analytics")
    assert analytics.env["LEAKY_ANALYTICS_USAGE_TOPIC"] == "usage.renamed"
    assert analytics.env["LEAKY_ANALYTICS_PURCHASE_TOPIC"] == "purchase.renamed"
    _saga, projection = worker_children(ports, children, stack)
    assert projection.env["LEAKY_ANALYTICS_PROJECTION_USAGE_TOPIC"] == "usage.renamed"
    assert projection.env["LEAKY_ANALYTICS_PROJECTION_PURCHASE_TOPIC"] == "purchase.own"


def test_without_a_renamed_topic_nothing_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LEAKY_TOKEN_EVENTS_USAGE_TOPIC", "LEAKY_TOKEN_SAGA_TOPIC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("LEAKY_ANALYTICS_USAGE_TOPIC", raising=False)
    ports = MeshPorts.from_bases(8080, 9901, 41000, 19101)
    analytics = next(c for c in service_children(ports, tmp_path) if c.name == "analytics")
    assert "LEAKY_ANALYTICS_USAGE_TOPIC" not in analytics.env  # the settings' default applies
