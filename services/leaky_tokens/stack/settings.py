"""Settings of the native stack (LEAKY_STACK_<FIELD>): where it keeps state, and its ports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from leaky_tokens.runtime import settings as settings_mod
from leaky_tokens.runtime.paths import checkout
from leaky_tokens.runtime.settings import doc

ENV_PREFIX = "LEAKY_STACK"


def _port(default: int, what: str) -> int:
    return field(default=default, metadata=doc(f"Port of {what}."))


@dataclass(frozen=True)
class StackSettings:
    """The native stack (LEAKY_STACK_<FIELD>)."""

    dir: Path | None = field(
        default=None,
        metadata=doc(
            "State (data, logs, pid files); empty = .leaky/stack in the checkout, or in the "
            "current directory when the package is installed."
        ),
    )
    cache_dir: Path = field(
        default=Path("~/.cache/leaky-tokens"),
        metadata=doc(
            "Downloads and builds every checkout reuses (jars, the Consul binary).",
            env="LEAKY_CACHE_DIR",
        ),
    )
    redis_port: int = _port(6379, "Redis")
    postgres_port: int = _port(5432, "PostgreSQL")
    kafka_port: int = _port(9092, "the Kafka broker")
    kafka_controller_port: int = _port(9093, "the Kafka KRaft controller")
    cassandra_port: int = _port(9042, "Cassandra (CQL)")
    cassandra_storage_port: int = _port(7000, "Cassandra's inter-node storage")
    consul_port: int = _port(8500, "Consul's HTTP API")
    consul_dns_port: int = _port(8600, "Consul's DNS")
    consul_grpc_port: int = _port(8502, "Consul's gRPC (xDS) API")
    discovery_port: int = _port(18000, "the discovery service (Envoy's EDS)")
    envoy_port: int = _port(8080, "the stack's Envoy gateway")
    envoy_admin_port: int = _port(9902, "the stack's Envoy admin")
    token_saga_port: int = _port(18100, "the purchase saga worker's gRPC health")
    analytics_projection_port: int = _port(18101, "the analytics projection worker's gRPC health")
    analytics_projection_metrics_port: int = _port(
        18102, "the analytics projection worker's Prometheus /metrics"
    )
    token_saga_metrics_port: int = _port(18103, "the purchase saga worker's /metrics (0: off)")

    def root(self) -> Path:
        """The state directory, absolute."""
        if self.dir is not None:
            return self.dir.expanduser().resolve()
        # Anchored at the checkout, not the current directory: every command, from anywhere
        # in the tree, sees the same stack.
        return ((checkout() or Path.cwd()) / ".leaky" / "stack").resolve()

    def cache(self) -> Path:
        """The cache directory, absolute."""
        return self.cache_dir.expanduser().resolve()


def load_stack_settings() -> StackSettings:
    """The stack's settings from the environment."""
    return settings_mod.load(StackSettings, ENV_PREFIX)
