"""`leaky up`: start every service and Envoy on loopback, show their status, stop them cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from leaky_tokens.gateway.edge_auth import JWKS_FETCHED_STAT
from leaky_tokens.loopback import HOST, envoy_binary, format_table, http_ok, log_tail
from leaky_tokens.mesh.plan import (
    Child,
    MeshPorts,
    StackTargets,
    envoy_yaml,
    port_conflicts,
    port_plan,
    service_children,
)
from leaky_tokens.topology import SERVICES, Service


class MeshError(RuntimeError):
    """A component failed to start; the message names it and its log file."""


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the supervisor dies, even by SIGKILL, so no
    service outlives a crashed `leaky up` (Linux PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def _write_envoy_config(data_dir: Path, ports: MeshPorts, services: tuple[Service, ...]) -> Path:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # holds keys and hashes
    path = data_dir / "envoy.yaml"
    path.write_text(envoy_yaml(ports, services))
    return path


async def _spawn(child: Child) -> None:
    child.log_path.parent.mkdir(parents=True, exist_ok=True)
    with child.log_path.open("ab") as log:
        child.log_start = log.tell()
        # A new session keeps the terminal's Ctrl-C from the children: the supervisor stops them.
        child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            env=child.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def _last_words(child: Child, lines: int = 15) -> str:
    """The end of what the child logged in this run, indented, for the console."""
    tail = log_tail(child.log_path, lines, child.log_start)
    if not tail:
        return ""
    return f"\n  last lines of {child.log_path}:\n" + "\n".join(f"    {line}" for line in tail)


def _failed(child: Child, why: str) -> MeshError:
    return MeshError(f"{child.name} {why}; see its log: {child.log_path}{_last_words(child)}")


async def _wait_grpc_health(child: Child, deadline: float, target: str | None = None) -> None:
    async with grpc.aio.insecure_channel(target or child.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if child.process and child.process.returncode is not None:
                raise _failed(child, f"exited with code {child.process.returncode}")
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(service=child.health_service), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if time.monotonic() > deadline:
                raise _failed(child, "did not become healthy in time")
            await asyncio.sleep(0.1)


async def _wait_for(child: Child, ready: Callable[[], bool], deadline: float, late: str) -> None:
    """Poll the blocking check `ready` (in a thread) until it holds; fail if the child exits
    or the deadline passes (`late` says what did not happen)."""
    while not await asyncio.to_thread(ready):
        if child.process and child.process.returncode is not None:
            raise _failed(child, f"exited with code {child.process.returncode}")
        if time.monotonic() > deadline:
            raise _failed(child, late)
        await asyncio.sleep(0.1)


async def _wait_http_ready(child: Child, url: str, deadline: float) -> None:
    await _wait_for(child, lambda: http_ok(url), deadline, f"was not reachable at {url} in time")


def _jwks_loaded(admin: str) -> bool:
    """True once Envoy's jwt_authn has fetched the JWKS at least once (ADR 0041): before it,
    the edge would refuse every token, so `leaky up` is not ready."""
    url = f"http://{admin}/stats?filter={JWKS_FETCHED_STAT}"
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            text = response.read().decode()
    except OSError:
        return False
    counts = [line.rpartition(":")[2].strip() for line in text.splitlines()]
    return any(count.isdigit() and int(count) > 0 for count in counts)


async def _wait_jwks(child: Child, admin: str, deadline: float) -> None:
    late = "never fetched the JWKS from the auth service in time"
    await _wait_for(child, lambda: _jwks_loaded(admin), deadline, late)


async def _start_all(
    children: list[Child],
    envoy: Child | None,
    ports: MeshPorts,
    limit: float,
    gateway: str,
    services: tuple[Service, ...],
) -> None:
    deadline = time.monotonic() + limit
    for child in children:
        await _spawn(child)
    await asyncio.gather(*(_wait_grpc_health(c, deadline) for c in children))
    if envoy is not None:
        await _spawn(envoy)
        await _wait_http_ready(envoy, f"http://{HOST}:{ports.envoy_admin}/ready", deadline)
        await _wait_jwks(envoy, f"{HOST}:{ports.envoy_admin}", deadline)
        return
    # The stack's Envoy finds the services through Consul: wait until it routes to each.
    by_name = {c.name: c for c in children}
    for service in services:
        if service.gateway_probe:
            url = f"http://{gateway}{service.gateway_probe}"
            await _wait_http_ready(by_name[service.slug], url, deadline)
        elif service.gateway_prefixes:
            # gRPC health and reflection on the gateway port route to it (the catalog).
            await _wait_grpc_health(by_name[service.slug], deadline, target=gateway)


async def _stop(children: list[Child], grace: float = 10.0) -> None:
    alive = [c for c in children if c.process and c.process.returncode is None]
    for child in alive:
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    for child in alive:
        try:
            await asyncio.wait_for(child.process.wait(), grace)  # type: ignore[union-attr]
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()  # type: ignore[union-attr]
            await child.process.wait()  # type: ignore[union-attr]


def status_table(children: list[Child], gateway: str, *, admin: str, data_dir: Path) -> str:
    """A readable table of what runs where, then the addresses and paths a newcomer needs."""
    rows = [("component", "address", "metrics", "pid", "state")]
    for child in children:
        pid = str(child.process.pid) if child.process else "-"
        running = child.process is not None and child.process.returncode is None
        state = "running" if running else "stopped"
        rows.append((child.name, child.address, child.metrics or "-", pid, state))
    lines = [format_table(rows, rule=True), ""]
    lines.append(f"HTTP/JSON and gRPC: http://{gateway}  (Ctrl-C stops everything)")
    if admin:
        lines.append(f"Envoy admin:        http://{admin}  (/stats, /clusters, /ready)")
    lines.append(f"Data directory:     {data_dir}")
    lines.append(f"Logs:               {data_dir / 'logs'}/<component>.log")
    return "\n".join(lines)


async def _envoy_child(ports: MeshPorts, data_dir: Path, services: tuple[Service, ...]) -> Child:
    config_path = await asyncio.to_thread(_write_envoy_config, data_dir, ports, services)
    return Child(
        name="envoy",
        argv=[
            envoy_binary(),
            "-c",
            str(config_path),
            "--use-dynamic-base-id",
            "--log-level",
            "warn",
        ],
        env=dict(os.environ),
        log_path=data_dir / "logs" / "envoy.log",
        address=f"{HOST}:{ports.gateway}",
        metrics=f"http://{HOST}:{ports.envoy_admin}/stats/prometheus",
    )


async def run_mesh(
    ports: MeshPorts,
    data_dir: Path,
    *,
    stack: StackTargets | None = None,
    startup_timeout: float = 60.0,
    services: tuple[Service, ...] = SERVICES,
) -> int:
    """Start everything, wait for a signal or a crash, stop everything; return an exit code.

    Embedded (default): static endpoints and this process's own Envoy. With `stack`: the
    services register in the stack's Consul and the stack's Envoy is the gateway.
    Nothing starts unless every port it needs can be bound: another process (a second
    `leaky up`) on one of them would answer the health checks in our children's place.
    """
    conflicts = port_conflicts(port_plan(ports, embedded=stack is None, services=services))
    if conflicts:
        lines = "\n".join(f"  {problem}" for problem in conflicts)
        print(f"leaky up: cannot start, ports in use:\n{lines}", file=sys.stderr, flush=True)
        return 1
    children = service_children(ports, data_dir, stack, services)
    gateway = stack.gateway if stack else f"{HOST}:{ports.gateway}"
    envoy = None if stack else await _envoy_child(ports, data_dir, services)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    everything = [*children, *([envoy] if envoy else [])]
    try:
        start = asyncio.create_task(
            _start_all(children, envoy, ports, startup_timeout, gateway, services)
        )
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([start, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not start.done():  # Ctrl-C during start-up
            start.cancel()
            return 0
        stopper.cancel()
        start.result()
        admin = stack.envoy_admin if stack else f"{HOST}:{ports.envoy_admin}"
        print(status_table(everything, gateway, admin=admin, data_dir=data_dir), flush=True)
        exited = [asyncio.create_task(c.process.wait()) for c in everything if c.process]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *exited], return_when=asyncio.FIRST_COMPLETED)
        crashed = [c for c in everything if c.process and c.process.returncode is not None]
        for task in [stopper, *exited]:
            task.cancel()
        if crashed and stopper not in done:
            for child in crashed:
                code = child.process.returncode if child.process else None
                print(
                    f"stopping: {child.name} exited unexpectedly (code {code}); "
                    f"log: {child.log_path}{_last_words(child)}",
                    file=sys.stderr,
                    flush=True,
                )
            return 1
        return 0
    except MeshError as error:
        print(f"leaky up failed: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        await _stop([envoy] if envoy else [])
        await _stop(children)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        print("mesh stopped", flush=True)
