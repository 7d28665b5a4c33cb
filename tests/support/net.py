"""Loopback ports for tests.

Prefer binding port 0 and reading the port back from the process under test (the gRPC servers
report theirs: `RunningServer.port`). These helpers are for processes that cannot do that yet
and take explicit ports (`leaky up --port/--admin-port/--grpc-base-port`, a service started as
`python -m` with LEAKY_*_PORT): a port found free here can still be taken before the process
binds it, so use them only there, and let the process fail loudly on a clash.
"""

from __future__ import annotations

import socket


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
