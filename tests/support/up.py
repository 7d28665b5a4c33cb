"""Ports and waits for tests that run `leaky up` themselves (its own fixtures aside)."""

from __future__ import annotations

import socket
import subprocess
import urllib.request
from pathlib import Path

from leaky_tokens.topology import GRPC_BASE_PORT, SERVICES
from tests.support.wait import WaitTimeout, wait_until

# How many consecutive ports `--grpc-base-port` hands out: one per topology service.
GRPC_SPAN = max(s.grpc_port for s in SERVICES) - GRPC_BASE_PORT + 1


def bound_ports(count: int) -> list[int]:
    """`count` distinct ports the kernel handed out (bound on 0, read back, released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def consecutive_free(size: int) -> int:
    """The first of `size` consecutive ports nothing holds right now (--grpc-base-port)."""
    while True:
        (first,) = bound_ports(1)
        probes: list[socket.socket] = []
        try:
            for port in range(first, first + size):
                probe = socket.socket()
                probes.append(probe)
                probe.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()


def wait_http_ok(url: str, process: subprocess.Popen[bytes], log: Path, within: float) -> None:
    """Poll url until it answers 200; fail with the process's output if it exits first."""

    def ok() -> bool:
        assert process.poll() is None, f"exited with {process.returncode}:\n{log.read_text()}"
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)

    try:
        wait_until(ok, within, what=url, interval=0.2, ignoring=(OSError,))
    except WaitTimeout as timeout:
        raise WaitTimeout(f"{timeout}:\n{log.read_text()}") from None
