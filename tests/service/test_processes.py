"""Several processes of one service answer on one port (LEAKY_<SVC>_PROCESSES, SO_REUSEPORT)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.support.exits import run_module
from tests.support.wait import wait_until

CHECK = "/grpc.health.v1.Health/Check"
CONNECTIONS = 24  # all on one process by chance: 2 * 2**-24


def _two_free_ports() -> int:
    """A port p with p + 1 free as well (worker i serves /metrics on p + i)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise AssertionError("no two consecutive free ports")


def _lines(log: Path, message: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("msg") == message:
                found.append(entry)
    return found


def _both(log: Path) -> list[dict[str, Any]]:
    """Both workers' "serving" lines once both logged one; empty until then."""
    serving = _lines(log, "serving")
    return serving if len(serving) == 2 else []


def _checks_answered(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as page:
        text = page.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_handled_total") and sample.labels == {
                "method": CHECK,
                "code": "OK",
            }:
                return float(sample.value)
    return 0.0


def _check_on_a_new_connection(address: str) -> None:
    # A local subchannel pool: a fresh TCP connection per channel, which the kernel hands to
    # one of the listening processes.
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(address, options=options) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_two_processes_share_the_port_and_both_answer(tmp_path: Path) -> None:
    metrics = _two_free_ports()
    env = {
        **os.environ,
        "LEAKY_CATALOG_PORT": "0",  # the supervisor picks one and hands it to both
        "LEAKY_CATALOG_PROCESSES": "2",
        "LEAKY_CATALOG_METRICS_PORT": str(metrics),
    }
    log = tmp_path / "catalog.log"
    with log.open("wb") as out:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "leaky_tokens.catalog"], env=env, stdout=out, stderr=out
        )
    try:
        serving = wait_until(lambda: _both(log), 60, what="two catalog processes serving")
        assert len({entry["address"] for entry in serving}) == 1
        pids = {entry["pid"] for entry in serving}
        assert len(pids) == 2
        assert supervisor.pid not in pids
        address = serving[0]["address"]
        for _ in range(CONNECTIONS):
            _check_on_a_new_connection(address)
        answered = [_checks_answered(metrics), _checks_answered(metrics + 1)]
        assert sum(answered) == CONNECTIONS
        assert all(count > 0 for count in answered)  # both processes took connections
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(60)
    assert supervisor.returncode == 0
    for pid in pids:  # the workers stopped (and were reaped) with their supervisor
        assert not Path(f"/proc/{pid}").exists()


def test_a_token_service_on_the_memory_store_refuses_a_second_process() -> None:
    done = run_module(
        "leaky_tokens.token", {"LEAKY_TOKEN_PROCESSES": "2", "LEAKY_TOKEN_STORE_BACKEND": "memory"}
    )
    assert done.returncode != 0
    assert "LEAKY_TOKEN_PROCESSES must be 1: the memory store" in done.stderr


def test_a_service_that_keeps_state_in_process_refuses_a_second_process() -> None:
    env = {**os.environ, "LEAKY_AUTH_PROCESSES": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "leaky_tokens.auth"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "LEAKY_AUTH_PROCESSES must be 1" in done.stderr
