"""The stack's components in start order, with ports from LEAKY_STACK_<NAME>_PORT."""

from __future__ import annotations

from dataclasses import dataclass

from leaky_tokens.loopback import HOST
from leaky_tokens.stack.cassandra import Cassandra
from leaky_tokens.stack.component import Component
from leaky_tokens.stack.consul import Consul
from leaky_tokens.stack.edge import Discovery, Envoy
from leaky_tokens.stack.kafka import Kafka
from leaky_tokens.stack.postgres import Postgres
from leaky_tokens.stack.redis import Redis
from leaky_tokens.stack.settings import StackSettings, load_stack_settings
from leaky_tokens.stack.workers import WorkerComponent
from leaky_tokens.topology import SERVICES, WORKERS, Service


def default_components(
    settings: StackSettings | None = None,
    services: tuple[Service, ...] = SERVICES,
    *,
    workers: bool = True,
) -> list[Component]:
    """Every component, in the order `up` starts them (`down` stops in reverse); the
    workers (the saga's Faust worker) last, after the servers they use, unless `workers`
    is False (the servers alone: what integration tests share)."""
    s = settings if settings is not None else load_stack_settings()
    servers = _servers(s, services)
    if not workers:
        return servers
    by_name = {c.name: c for c in servers}
    postgres, redis = by_name["postgres"], by_name["redis"]
    assert isinstance(postgres, Postgres)
    assert isinstance(redis, Redis)
    databases = {svc.slug: postgres.url(svc.database) for svc in services if svc.database}
    return servers + [
        WorkerComponent(
            w,
            getattr(s, f"{w.name.replace('-', '_')}_port"),  # LEAKY_STACK_<NAME>_PORT
            consul=by_name["consul"].address,
            kafka=by_name["kafka"].address,
            redis_url=redis.url,
            database_url=databases.get(w.within, ""),
            metrics_port=getattr(s, f"{w.name.replace('-', '_')}_metrics_port", 0),
        )
        for w in WORKERS
    ]


def _servers(s: StackSettings, services: tuple[Service, ...]) -> list[Component]:
    return [
        Redis(s.redis_port),
        Postgres(s.postgres_port),
        Kafka(s.kafka_port, s.kafka_controller_port),
        Cassandra(s.cassandra_port, s.cassandra_storage_port),
        Consul(s.consul_port, s.consul_dns_port, s.consul_grpc_port),
        Discovery(s.discovery_port, s.consul_port, services),
        Envoy(s.envoy_port, s.envoy_admin_port, s.discovery_port, services),
    ]


@dataclass(frozen=True)
class StackEndpoints:
    """Where the configured stack serves what the mesh's services use."""

    consul: str
    gateway: str
    envoy_admin: str
    database_urls: dict[str, str]  # service slug -> URL of its database
    redis_url: str = ""  # the stack's Redis (services with uses_redis keep state there)
    kafka_bootstrap: str = ""  # the stack's Kafka (services with publishes_events relay there)


def stack_endpoints(
    settings: StackSettings | None = None, services: tuple[Service, ...] = SERVICES
) -> StackEndpoints:
    """The configured stack's Consul, gateway, Envoy admin and each service's database."""
    components = {c.name: c for c in default_components(settings, services, workers=False)}
    postgres, envoy, consul = components["postgres"], components["envoy"], components["consul"]
    redis, kafka = components["redis"], components["kafka"]
    assert isinstance(postgres, Postgres)
    assert isinstance(envoy, Envoy)
    assert isinstance(redis, Redis)
    urls = {s.slug: postgres.url(s.database) for s in services if s.database}
    return StackEndpoints(
        consul.address, envoy.address, f"{HOST}:{envoy.admin_port}", urls, redis.url, kafka.address
    )
