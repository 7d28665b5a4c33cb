"""`leaky up` refuses ports another process owns, and says on the console why it stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.up import GRPC_SPAN, bound_ports, consecutive_free, wait_http_ok

pytestmark = pytest.mark.e2e

# The `leaky` command, on any interpreter (a console script needs an installed package).
LEAKY = (sys.executable, "-m", "leaky_tokens")


def up_argv(port: int, admin: int, grpc_base: int, data_dir: Path) -> list[str]:
    return [
        *LEAKY,
        "up",
        "--port",
        str(port),
        "--admin-port",
        str(admin),
        "--grpc-base-port",
        str(grpc_base),
        "--metrics-base-port",
        "0",
        "--data-dir",
        str(data_dir),
    ]


def test_a_second_leaky_up_on_the_same_ports_exits_naming_the_port(tmp_path: Path) -> None:
    port, admin = bound_ports(2)
    grpc_base = consecutive_free(GRPC_SPAN)
    first_log = tmp_path / "first.log"
    with first_log.open("wb") as log:
        first = subprocess.Popen(
            up_argv(port, admin, grpc_base, tmp_path / "first"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/api/v1/tokens/status", first, first_log, 90)
        second = subprocess.run(
            up_argv(port, admin, grpc_base, tmp_path / "second"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert first.poll() is None, "the second run must not disturb the first"
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=30)
    assert second.returncode == 1
    assert f"port {port} (the gateway (Envoy))" in second.stderr
    assert f"port {grpc_base + 1} (auth gRPC)" in second.stderr
    assert "--grpc-base-port" in second.stderr
    assert "running" not in second.stdout  # no status table claiming success


def test_a_service_that_dies_during_start_up_shows_its_last_log_lines(tmp_path: Path) -> None:
    port, admin = bound_ports(2)
    env = {**os.environ, "LEAKY_AUTH_DATABASE_URL": "nosuchdriver://nowhere"}
    result = subprocess.run(
        up_argv(port, admin, consecutive_free(GRPC_SPAN), tmp_path / "data"),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1
    assert "auth exited with code" in result.stderr
    assert "last lines of" in result.stderr
    assert "nosuchdriver" in result.stderr  # the real cause, from auth's own log
