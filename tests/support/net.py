"""Loopback ports for tests.

Prefer binding port 0 and reading the port back from the process under test (the gRPC servers
report theirs: `RunningServer.port` in-process, `serving_port` for a process started with
port 0). These helpers are for processes that cannot do that yet
and take explicit ports (`leaky up --port/--admin-port/--grpc-base-port`, a service started as
`python -m` with LEAKY_*_PORT): a port found free here can still be taken before the process
binds it, so use them only there, and let the process fail loudly on a clash.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import subprocess
from pathlib import Path

from tests.support.wait import wait_until


def free_port() -> int:
    """A TCP port nothing listens on right now (racy: see the module docstring)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_block(size: int, attempts: int = 100) -> int:
    """The first of `size` consecutive ports that are free right now (racy, like free_port)."""
    for _ in range(attempts):
        candidate = free_port()
        if candidate + size <= 65536 and all(port_free(candidate + i) for i in range(size)):
            return candidate
    raise RuntimeError(f"no block of {size} free loopback ports in {attempts} attempts")


def port_free(port: int) -> bool:
    """Whether a TCP port on 127.0.0.1 can be bound right now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def serving_port(process: subprocess.Popen[bytes], log_path: Path, timeout: float = 30) -> int:
    """The port a service started with port 0 bound, from the JSON "serving" line it logs
    to `log_path` (runtime/server.py); fails early, with the log, if the process exits."""

    def reported() -> int:  # 0 = not yet
        text = log_path.read_text(errors="replace")
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode} before serving:\n{text}")
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("msg") == "serving":
                    return int(str(entry["address"]).rsplit(":", 1)[1])
        return 0

    return wait_until(reported, timeout, what=f"a 'serving' line in {log_path.name}")


# Below Linux's ephemeral range (32768-60999): while a proxy is cut or a broker restarts, its
# port is unbound, and an outgoing connection on this busy machine must not take it as its
# local port before it is bound again. Other tests' ports (free_port) come from the ephemeral range.
QUIET_PORTS = range(20_000, 32_768)


def quiet_port(attempts: int = 200) -> int:
    """A port of QUIET_PORTS that is free right now."""
    for _ in range(attempts):
        port = random.choice(QUIET_PORTS)  # noqa: S311 (a port, not a secret)
        if port_free(port):
            return port
    raise RuntimeError(f"no free port in {QUIET_PORTS} after {attempts} attempts")
