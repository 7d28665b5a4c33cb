"""What `leaky up` runs where: ports, the child processes, the Envoy config, port checks."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from leaky_tokens.gateway.envoy_config import Upstream, dump, render
from leaky_tokens.loopback import HOST, port_taken
from leaky_tokens.topology import (
    GRPC_BASE_PORT,
    ISSUER,
    METRICS_BASE_PORT,
    SERVICES,
    WORKERS,
    Service,
    Worker,
)


@dataclass(frozen=True)
class MeshPorts:
    """Loopback ports of the embedded mesh: the gateway, Envoy's admin and each service's."""

    gateway: int = 8080
    envoy_admin: int = 9901
    grpc: Mapping[str, int] = field(default_factory=lambda: {s.slug: s.grpc_port for s in SERVICES})
    metrics: Mapping[str, int] = field(
        default_factory=lambda: {s.slug: s.metrics_port for s in SERVICES}
    )
    # gRPC health port of each worker (stack mode only).
    workers: Mapping[str, int] = field(
        default_factory=lambda: {w.name: w.health_port for w in WORKERS}
    )
    # Prometheus port of each worker that exports metrics (0: none, or metrics off).
    worker_metrics: Mapping[str, int] = field(
        default_factory=lambda: {w.name: w.metrics_port for w in WORKERS}
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
        workers = {w.name: grpc_base + w.health_port - GRPC_BASE_PORT for w in WORKERS}
        worker_metrics = {
            w.name: metrics_base + w.metrics_port - METRICS_BASE_PORT
            if metrics_base and w.metrics_port
            else 0
            for w in WORKERS
        }
        return cls(gateway, admin, grpc_ports, metrics, workers, worker_metrics)


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    address: str
    metrics: str = ""  # URL of its Prometheus endpoint, if any
    process: asyncio.subprocess.Process | None = None
    log_start: int = 0  # size of the (appended) log when this run started it
    health_service: str = ""  # grpc.health.v1 name probed before it counts as started


@dataclass(frozen=True)
class StackTargets:
    """Where the native stack (`leaky stack up`) serves: services register in its Consul,
    auth stores in its PostgreSQL, and its Envoy (fed from Consul) is the gateway."""

    consul: str
    gateway: str
    database_urls: Mapping[str, str] = field(default_factory=dict)  # slug -> its database
    envoy_admin: str = ""  # host:port of the stack Envoy's admin
    redis_url: str = ""  # the stack's Redis, for services with uses_redis
    kafka_bootstrap: str = ""  # the stack's Kafka, for services with publishes_events
    cassandra: str = ""  # the stack's CQL host:port, for workers with uses_cassandra


# Analytics reads the topics the token service writes: a topic set for the token service only
# (LEAKY_TOKEN_*) is the one analytics' embedded tailer and the projection worker read, unless
# their own variable says otherwise. Without this, a renamed topic left Report and the purchase
# history silently empty.
TOPIC_FOLLOWERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "LEAKY_TOKEN_EVENTS_USAGE_TOPIC",
        ("LEAKY_ANALYTICS_USAGE_TOPIC", "LEAKY_ANALYTICS_PROJECTION_USAGE_TOPIC"),
    ),
    (
        "LEAKY_TOKEN_SAGA_TOPIC",
        ("LEAKY_ANALYTICS_PURCHASE_TOPIC", "LEAKY_ANALYTICS_PROJECTION_PURCHASE_TOPIC"),
    ),
)


def follow_topics(env: dict[str, str]) -> dict[str, str]:
    """env with each follower of TOPIC_FOLLOWERS set to its source's value when the source is
    set and the follower is not (an explicit follower wins)."""
    for source, followers in TOPIC_FOLLOWERS:
        if env.get(source):
            for follower in followers:
                env.setdefault(follower, env[source])
    return env


def service_children(
    ports: MeshPorts,
    data_dir: Path,
    stack: StackTargets | None = None,
    services: tuple[Service, ...] = SERVICES,
) -> list[Child]:
    """The gRPC services, each a `python -m leaky_tokens.<svc>` process."""
    logs = data_dir / "logs"
    auth_target = f"{HOST}:{ports.grpc[ISSUER]}"
    children = []
    for service in services:
        prefix, port = service.env_prefix, ports.grpc[service.slug]
        metrics = ports.metrics[service.slug]
        child_env = follow_topics(
            {
                **os.environ,
                "LEAKY_DATA_DIR": str(data_dir),
                f"{prefix}_HOST": HOST,
                f"{prefix}_PORT": str(port),
                f"{prefix}_METRICS_PORT": str(metrics),
            }
        )
        if service.serve:  # another deployment of its package (the ratelimit's rls)
            child_env[f"{prefix}_SERVE"] = service.serve
        if service.needs_auth_target:
            child_env[f"{prefix}_AUTH_TARGET"] = auth_target
        for peer in service.targets:
            child_env[f"{prefix}_{peer.upper()}_TARGET"] = f"{HOST}:{ports.grpc[peer]}"
        if stack is not None:
            child_env[f"{prefix}_CONSUL_ADDRESS"] = stack.consul
            if service.slug in stack.database_urls:
                child_env[f"{prefix}_DATABASE_URL"] = stack.database_urls[service.slug]
            if service.uses_redis and stack.redis_url:
                child_env[f"{prefix}_STORE_BACKEND"] = "redis"
                child_env[f"{prefix}_STORE_REDIS_URL"] = stack.redis_url
            if service.publishes_events and stack.kafka_bootstrap:
                child_env[f"{prefix}_EVENTS_BUS"] = "kafka"
                child_env[f"{prefix}_EVENTS_KAFKA_BOOTSTRAP"] = stack.kafka_bootstrap
        children.append(
            Child(
                name=service.slug,
                argv=[sys.executable, "-m", service.module],
                env=child_env,
                log_path=logs / f"{service.slug}.log",
                address=f"{HOST}:{port}",
                metrics=f"http://{HOST}:{metrics}/metrics" if metrics else "",
                health_service=service.health_service,
            )
        )
    if stack is not None:
        children += worker_children(ports, children, stack)
    return children


def worker_children(
    ports: MeshPorts,
    service_children: list[Child],
    stack: StackTargets,
    workers: tuple[Worker, ...] = WORKERS,
) -> list[Child]:
    """The stack-only workers (the saga's Faust worker, the analytics projection), each
    with the settings of the service it works for (same stores and databases) plus its own
    health port (and /metrics port, if it has one), Consul and Kafka; skipped when that
    service is not run."""
    by_name = {c.name: c for c in service_children}
    found = []
    for worker in workers:
        within = by_name.get(worker.within)
        if within is None:
            continue
        prefix, port = worker.env_prefix, ports.workers[worker.name]
        within_prefix = f"LEAKY_{worker.within.upper()}"
        within.env.update({f"{within_prefix}_{k}": v for k, v in worker.within_settings})
        env = {
            **within.env,
            f"{prefix}_HOST": HOST,
            f"{prefix}_PORT": str(port),
            f"{prefix}_CONSUL_ADDRESS": stack.consul,
            f"{prefix}_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        }
        if worker.uses_cassandra and stack.cassandra:
            # The service reads what the worker writes: both on the stack's Cassandra.
            host, _, cql_port = stack.cassandra.rpartition(":")
            cassandra = {
                f"{within_prefix}_STORE": "cassandra",
                f"{within_prefix}_CASSANDRA_HOSTS": host,
                f"{within_prefix}_CASSANDRA_PORT": cql_port,
            }
            within.env.update(cassandra)
            env.update(cassandra)
            env[f"{prefix}_STORE"] = "cassandra"
        metrics = ports.worker_metrics.get(worker.name, 0)
        if worker.metrics_port:
            env[f"{prefix}_METRICS_PORT"] = str(metrics)  # 0: --metrics-base-port 0
        found.append(
            Child(
                name=worker.name,
                argv=[sys.executable, "-m", worker.module],
                env=env,
                log_path=within.log_path.with_name(f"{worker.name}.log"),
                address=f"{HOST}:{port}",
                metrics=f"http://{HOST}:{metrics}/metrics" if metrics else "",
            )
        )
    return found


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


@dataclass(frozen=True)
class PortUse:
    """A port `leaky up` is about to bind: who binds it, and what moves it."""

    port: int
    what: str
    moved_by: str


def port_plan(
    ports: MeshPorts, *, embedded: bool = True, services: tuple[Service, ...] = SERVICES
) -> list[PortUse]:
    """Every port this run binds (the stack's gateway is not ours in stack mode)."""
    uses = []
    if embedded:
        uses.append(PortUse(ports.gateway, "the gateway (Envoy)", "--port"))
        uses.append(PortUse(ports.envoy_admin, "Envoy's admin", "--admin-port"))
    for service in services:
        uses.append(PortUse(ports.grpc[service.slug], f"{service.slug} gRPC", "--grpc-base-port"))
        if ports.metrics[service.slug]:
            what = f"{service.slug} /metrics"
            moved = "--metrics-base-port (0 turns metrics off)"
            uses.append(PortUse(ports.metrics[service.slug], what, moved))
    if not embedded:  # the workers run in stack mode only
        for name, port in ports.workers.items():
            uses.append(PortUse(port, f"{name} gRPC health", "--grpc-base-port"))
        for name, port in ports.worker_metrics.items():
            if port:
                moved = "--metrics-base-port (0 turns metrics off)"
                uses.append(PortUse(port, f"{name} /metrics", moved))
    return uses


def port_conflicts(
    uses: list[PortUse], taken: Callable[[str, int], str | None] = port_taken
) -> list[str]:
    """One line per port that cannot be bound, naming the component and the flag that moves
    it; also ports planned twice (flags that overlap)."""
    problems: list[str] = []
    seen: dict[int, str] = {}
    for use in uses:
        if use.port == 0:  # the kernel picks one: nothing to collide with
            continue
        if use.port in seen:
            problems.append(
                f"port {use.port} is planned for both {seen[use.port]} and {use.what}; "
                f"move one with {use.moved_by}"
            )
            continue
        seen[use.port] = use.what
        why = taken(HOST, use.port)
        if why is not None:
            problems.append(
                f"port {use.port} ({use.what}) on {HOST} is {why}; "
                f"stop that process or move it with {use.moved_by}"
            )
    return problems
