"""The stack's components in start order, with ports from LEAKY_STACK_<NAME>_PORT."""

from __future__ import annotations

import os

from leaky_tokens.stack.cassandra import Cassandra
from leaky_tokens.stack.component import Component
from leaky_tokens.stack.consul import Consul
from leaky_tokens.stack.edge import Discovery, Envoy
from leaky_tokens.stack.kafka import Kafka
from leaky_tokens.stack.postgres import Postgres
from leaky_tokens.stack.redis import Redis
from leaky_tokens.topology import SERVICES, Service


def _port(name: str, default: int) -> int:
    return int(os.environ.get(f"LEAKY_STACK_{name.upper()}_PORT", default))


def default_components() -> list[Component]:
    """Every component, in the order `up` starts them (`down` stops in reverse)."""
    return [
        Redis(_port("redis", 6379)),
        Postgres(_port("postgres", 5432)),
        Kafka(_port("kafka", 9092), _port("kafka_controller", 9093)),
        Cassandra(_port("cassandra", 9042), _port("cassandra_storage", 7000)),
        Consul(_port("consul", 8500), _port("consul_dns", 8600), _port("consul_grpc", 8502)),
        Discovery(_port("discovery", 18000), _port("consul", 8500)),
        Envoy(_port("envoy", 8080), _port("envoy_admin", 9902), _port("discovery", 18000)),
    ]


def stack_targets(
    services: tuple[Service, ...] = SERVICES,
) -> tuple[str, str, dict[str, str]]:
    """(Consul address, gateway address, slug -> database URL) of the configured stack."""
    components = {c.name: c for c in default_components()}
    postgres, envoy = components["postgres"], components["envoy"]
    assert isinstance(postgres, Postgres)
    assert isinstance(envoy, Envoy)
    urls = {s.slug: postgres.url(s.database) for s in services if s.database}
    return f"127.0.0.1:{_port('consul', 8500)}", envoy.address, urls
