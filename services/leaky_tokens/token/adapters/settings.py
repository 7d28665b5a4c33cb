"""Settings of the decision store: backend, Redis address, timeout and the failure policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from leaky_tokens.runtime.settings import SettingsError, doc


class Backend(StrEnum):
    """Where decisions are kept."""

    MEMORY = "memory"  # one process (embedded mode)
    REDIS = "redis"  # a single Redis
    CLUSTER = "cluster"  # a Redis Cluster (any node's address; the client finds the rest)


class FailureMode(StrEnum):
    """What a decision does while Redis cannot be reached (issue 7, section 2)."""

    FAIL_CLOSED = "fail_closed"  # refuse (UNAVAILABLE): never more than the policy allows
    FAIL_OPEN = "fail_open"  # admit (recorded locally): availability over limits
    LOCAL_EMERGENCY = "local_emergency"  # a per-instance budget: a fraction of each limit


@dataclass(frozen=True)
class TokenStoreSettings:
    """The decision store's settings; the token service's settings inherit them."""

    store_backend: str = field(
        default="memory", metadata=doc("Decision store: memory, redis or cluster.")
    )
    store_redis_url: str = field(
        default="redis://127.0.0.1:6379/0",
        metadata=doc("Redis URL (redis) or the URL of any cluster node (cluster)."),
    )
    store_key_prefix: str = field(default="lt", metadata=doc("Prefix of every Redis key."))
    store_shards: int = field(
        default=64,
        metadata=doc("Hash-tag shards (event streams, deadline sets); fixed per deployment."),
    )
    store_timeout_ms: int = field(
        default=100, metadata=doc("A store call slower than this counts as Redis unreachable.")
    )
    store_failure_mode: str = field(
        default="fail_closed",
        metadata=doc("While Redis is unreachable: fail_closed, fail_open or local_emergency."),
    )
    store_emergency_percent: int = field(
        default=10,
        metadata=doc("local_emergency: each limit's share (percent) one instance may grant."),
    )
    store_recovery_ms: int = field(
        default=1000, metadata=doc("While degraded, how often a call tries Redis again.")
    )
    store_trip_after_ms: int = field(
        default=500,
        metadata=doc(
            "Timed-out store calls mark Redis unreachable only once they have gone on this long"
            " with no call answered in between (a refused connection trips at once; 0: the"
            " first timeout trips)."
        ),
    )
    store_record_ttl_ms: int = field(
        default=3_600_000,
        metadata=doc("How long decisions (for refunds) and idempotency keys are kept."),
    )
    store_sweep_interval_ms: int = field(
        default=1000, metadata=doc("How often expired reservations are released.")
    )
    store_max_batch: int = field(
        default=256, metadata=doc("Most script calls sent in one Redis pipeline.")
    )

    def __post_init__(self) -> None:
        _one_of("store_backend", self.store_backend, Backend)
        _one_of("store_failure_mode", self.store_failure_mode, FailureMode)
        if not 1 <= self.store_emergency_percent <= 100:
            raise SettingsError("store_emergency_percent must be between 1 and 100")
        if self.store_trip_after_ms < 0:
            raise SettingsError("store_trip_after_ms must not be negative")
        for name in (
            "store_timeout_ms",
            "store_recovery_ms",
            "store_record_ttl_ms",
            "store_sweep_interval_ms",
            "store_max_batch",
            "store_shards",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be positive")

    @property
    def backend(self) -> Backend:
        """`store_backend` as its enum."""
        return Backend(self.store_backend)

    @property
    def failure_mode(self) -> FailureMode:
        """`store_failure_mode` as its enum."""
        return FailureMode(self.store_failure_mode)


def _one_of(name: str, value: str, kind: type[StrEnum]) -> None:
    if value not in {m.value for m in kind}:
        raise SettingsError(f"{name}: {value!r} is not one of {', '.join(m.value for m in kind)}")
