"""A real 3-node Redis Cluster on loopback for tests: started in a tmp dir, stopped after."""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from tests.support.net import port_free
from tests.support.wait import WaitTimeout, wait_until

HOST = "127.0.0.1"


def _cli(port: int, *args: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", HOST, "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.stdout


def _answers(port: int, expected: str, *args: str) -> bool:
    return expected in _cli(port, *args)


# Node ports whose cluster bus (port + 10000) is below Linux's ephemeral range (32768-60999)
# too: an outgoing connection of the busy test session could take a port picked from that
# range before the node binds it (CI saw a node never answer).
NODE_PORTS = range(20_000, 22_768)


def _ports(count: int) -> list[int]:
    found: list[int] = []
    while len(found) < count:
        port = random.choice(NODE_PORTS)  # noqa: S311 (a port, not a secret)
        if port not in found and port_free(port) and port_free(port + 10000):
            found.append(port)
    return found


@contextmanager
def redis_cluster(folder: Path, nodes: int = 3) -> Iterator[list[int]]:
    """Start `nodes` cluster-enabled redis-servers, join them (no replicas), yield the ports."""
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("redis-cli") is None:
        raise RuntimeError("redis-server and redis-cli are needed (the stack installs them)")
    ports = _ports(nodes)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            home = folder / str(port)
            home.mkdir(parents=True)
            processes.append(
                subprocess.Popen(
                    [
                        binary,
                        "--bind",
                        HOST,
                        "--port",
                        str(port),
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(home / "nodes.conf"),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(home),
                        "--daemonize",
                        "no",
                        "--logfile",
                        str(home / "redis.log"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in ports:
            try:
                wait_until(partial(_answers, port, "PONG", "ping"), 15, what=f"node {port}")
            except WaitTimeout as error:
                log = folder / str(port) / "redis.log"
                tail = log.read_text()[-2000:] if log.exists() else "(no log)"
                raise WaitTimeout(f"{error}; its log ends:\n{tail}") from None
        created = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"{HOST}:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed: {created.stdout}{created.stderr}"
            )
        for port in ports:
            wait_until(
                partial(_answers, port, "cluster_state:ok", "cluster", "info"),
                30,
                what=f"cluster state ok on {port}",
            )
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
