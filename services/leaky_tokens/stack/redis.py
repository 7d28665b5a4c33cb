"""Redis from Debian's redis-server package."""

from __future__ import annotations

import shutil
import subprocess

from leaky_tokens.stack.component import HOST, Component, ComponentError, Launch, StackPaths
from leaky_tokens.stack.debian import ensure_packages


class Redis(Component):
    """redis-server on loopback, no persistence (hot state only; the ledger is PostgreSQL)."""

    name = "redis"
    startup_timeout = 15.0

    def __init__(self, port: int = 6379) -> None:
        self.port = port

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """The URL clients connect with (database 0)."""
        return f"redis://{HOST}:{self.port}/0"

    def provision(self, paths: StackPaths) -> None:
        ensure_packages({"redis-server": "redis-server"})

    def launch(self, paths: StackPaths) -> Launch:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ComponentError("redis: redis-server not found after installation")
        return Launch(
            [
                binary,
                "--bind",
                HOST,
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(paths.data(self.name)),
                "--daemonize",
                "no",
            ]
        )

    def ready(self, paths: StackPaths) -> bool:
        try:
            answer = subprocess.run(
                ["redis-cli", "-h", HOST, "-p", str(self.port), "ping"],
                capture_output=True,
                text=True,
                timeout=1,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return answer.stdout.strip() == "PONG"
