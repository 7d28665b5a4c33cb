"""A private redis-server on a free loopback port for tests that stop and restart it."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.net import free_port
from tests.support.wait import wait_until

HOST = "127.0.0.1"


def _listening(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), 0.2).close()
    except OSError:
        return False
    return True


class RedisServer:
    """One redis-server (no persistence: a restart forgets keys and cached scripts)."""

    def __init__(self, folder: Path, *args: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is needed (the stack installs it)")
        self.port = free_port()
        self._argv = [binary, "--bind", HOST, "--port", str(self.port), "--save", ""]
        self._argv += ["--appendonly", "no", "--dir", str(folder), *args]
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (again, on the same port) and wait until it accepts connections."""
        self._process = subprocess.Popen(
            self._argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: _listening(self.port), 15, what=f"redis-server on {self.port}")

    def stop(self) -> None:
        """Kill it (SIGKILL: a crash, not a shutdown) and wait until it is gone."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None


@contextmanager
def redis_server(folder: Path, *args: str) -> Iterator[RedisServer]:
    """A started RedisServer with extra `args`; killed afterwards."""
    server = RedisServer(folder, *args)
    server.start()
    try:
        yield server
    finally:
        server.stop()
