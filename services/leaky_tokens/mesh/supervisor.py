"""`leaky up`: start every service and Envoy on loopback, show their status, stop them cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from leaky_tokens.gateway.envoy_config import Upstream, dump, render
from leaky_tokens.loopback import HOST, envoy_binary, format_table, http_ok
from leaky_tokens.topology import GRPC_BASE_PORT, METRICS_BASE_PORT, SERVICES, Service


@dataclass(frozen=True)
class MeshPorts:
    """Loopback ports of the embedded mesh: the gateway, Envoy's admin and each service's."""

    gateway: int = 8080
    envoy_admin: int = 9901
    grpc: Mapping[str, int] = field(default_factory=lambda: {s.slug: s.grpc_port for s in SERVICES})
    metrics: Mapping[str, int] = field(
        default_factory=lambda: {s.slug: s.metrics_port for s in SERVICES}
    )

    @classmethod
    def from_bases(
        cls,
        gateway: int = 8080,
        admin: int = 9901,
        grpc_base: int = GRPC_BASE_PORT,
        metrics_base: int = METRICS_BASE_PORT,
        services: tuple[Service, ...] = SERVICES,
    ) -> MeshPorts:
        """Each service's default ports moved by the bases' offsets; metrics_base 0 turns
        the metrics endpoints off."""
        grpc_ports = {s.slug: grpc_base + s.grpc_port - GRPC_BASE_PORT for s in services}
        metrics = {
            s.slug: metrics_base + s.metrics_port - METRICS_BASE_PORT
            if metrics_base and s.metrics_port
            else 0
            for s in services
        }
        return cls(gateway, admin, grpc_ports, metrics)


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    address: str
    process: asyncio.subprocess.Process | None = None


@dataclass(frozen=True)
class StackTargets:
    """Where the native stack (`leaky stack up`) serves: services register in its Consul,
    auth stores in its PostgreSQL, and its Envoy (fed from Consul) is the gateway."""

    consul: str
    gateway: str
    database_urls: Mapping[str, str] = field(default_factory=dict)  # slug -> its database


class MeshError(RuntimeError):
    """A component failed to start; the message names it and its log file."""


def service_children(
    ports: MeshPorts,
    data_dir: Path,
    stack: StackTargets | None = None,
    services: tuple[Service, ...] = SERVICES,
) -> list[Child]:
    """The gRPC services, each a `python -m leaky_tokens.<svc>` process."""
    logs = data_dir / "logs"
    auth_target = f"{HOST}:{ports.grpc['auth']}"
    children = []
    for service in services:
        prefix, port = service.env_prefix, ports.grpc[service.slug]
        child_env = {
            **os.environ,
            "LEAKY_DATA_DIR": str(data_dir),
            f"{prefix}_HOST": HOST,
            f"{prefix}_PORT": str(port),
            f"{prefix}_METRICS_PORT": str(ports.metrics[service.slug]),
        }
        if service.needs_auth_target:
            child_env[f"{prefix}_AUTH_TARGET"] = auth_target
        if stack is not None:
            child_env[f"{prefix}_CONSUL_ADDRESS"] = stack.consul
            if service.slug in stack.database_urls:
                child_env[f"{prefix}_DATABASE_URL"] = stack.database_urls[service.slug]
        children.append(
            Child(
                name=service.slug,
                argv=[sys.executable, "-m", service.module],
                env=child_env,
                log_path=logs / f"{service.slug}.log",
                address=f"{HOST}:{port}",
            )
        )
    return children


def envoy_yaml(ports: MeshPorts, services: tuple[Service, ...] = SERVICES) -> str:
    """The Envoy config of the embedded mesh (static endpoints on loopback)."""
    upstreams = [Upstream(s.slug, ((HOST, ports.grpc[s.slug]),)) for s in services]
    config = render(
        listen=(HOST, ports.gateway),
        admin=(HOST, ports.envoy_admin),
        upstreams=upstreams,
        services=services,
    )
    return dump(config)


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
        # A new session keeps the terminal's Ctrl-C from the children: the supervisor stops them.
        child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            env=child.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def _failed(child: Child, why: str) -> MeshError:
    return MeshError(f"{child.name} {why}; see its log: {child.log_path}")


async def _wait_grpc_health(child: Child, deadline: float, target: str | None = None) -> None:
    async with grpc.aio.insecure_channel(target or child.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if child.process and child.process.returncode is not None:
                raise _failed(child, f"exited with code {child.process.returncode}")
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if time.monotonic() > deadline:
                raise _failed(child, "did not become healthy in time")
            await asyncio.sleep(0.1)


async def _wait_http_ready(child: Child, url: str, deadline: float) -> None:
    while not await asyncio.to_thread(http_ok, url):
        if child.process and child.process.returncode is not None:
            raise _failed(child, f"exited with code {child.process.returncode}")
        if time.monotonic() > deadline:
            raise _failed(child, f"was not reachable at {url} in time")
        await asyncio.sleep(0.1)


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


def status_table(children: list[Child], gateway: str) -> str:
    """A readable table of what runs where."""
    rows = [("component", "address", "pid", "state")]
    for child in children:
        pid = str(child.process.pid) if child.process else "-"
        running = child.process is not None and child.process.returncode is None
        rows.append((child.name, child.address, pid, "running" if running else "stopped"))
    lines = [format_table(rows, rule=True), ""]
    lines.append(f"HTTP/JSON and gRPC: http://{gateway}  (Ctrl-C stops everything)")
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
    """
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
        print(status_table(everything, gateway), flush=True)
        exited = [asyncio.create_task(c.process.wait()) for c in everything if c.process]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *exited], return_when=asyncio.FIRST_COMPLETED)
        crashed = [c for c in everything if c.process and c.process.returncode is not None]
        for task in [stopper, *exited]:
            task.cancel()
        if crashed and stopper not in done:
            names = ", ".join(f"{c.name} (log: {c.log_path})" for c in crashed)
            print(f"stopping: {names} exited unexpectedly", file=sys.stderr, flush=True)
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
