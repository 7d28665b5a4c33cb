"""Build the decision store the settings ask for (the bootstrap calls this)."""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from leaky_tokens.token.adapters.in_memory_decision_store import InMemoryDecisionStore
from leaky_tokens.token.adapters.key_layout import KeyLayout
from leaky_tokens.token.adapters.redis_decision_store import RedisDecisionStore
from leaky_tokens.token.adapters.redis_rate_counter import RedisRequestCounter
from leaky_tokens.token.adapters.redis_wire import Endpoint, RedisWire
from leaky_tokens.token.adapters.resilient_decision_store import ResilientDecisionStore
from leaky_tokens.token.adapters.settings import Backend, TokenStoreSettings
from leaky_tokens.token.domain.ports import DecisionStore

EVENTS_TIMEOUT_S = 1.0  # at least this long for one read or trim of every event log


def redis_client(settings: TokenStoreSettings) -> Redis | RedisCluster:
    """redis-py's client for the store's Redis or cluster, with the store's timeouts."""
    timeout = settings.store_timeout_ms / 1000
    if settings.backend is Backend.CLUSTER:
        return RedisCluster.from_url(
            settings.store_redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
    return Redis.from_url(
        settings.store_redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
    )


def fast_wire(settings: TokenStoreSettings, *, min_timeout_s: float = 0.0) -> RedisWire | None:
    """The dedicated RESP client for script calls, or None where redis-py keeps them: a
    cluster (slot routing) or a URL it does not take (rediss://: TLS)."""
    if settings.backend is not Backend.REDIS:
        return None
    if not settings.store_redis_url.startswith(("redis://", "unix://")):
        return None
    timeout = max(settings.store_timeout_ms / 1000, min_timeout_s)
    endpoint = Endpoint.from_url(settings.store_redis_url)
    return RedisWire(endpoint, timeout_s=timeout, connect_timeout_s=timeout)


def redis_counter(settings: TokenStoreSettings) -> RedisRequestCounter:
    """ShouldRateLimit's counters on the store's Redis (connections of their own)."""
    client = fast_wire(settings) or redis_client(settings)
    return RedisRequestCounter(client, settings.store_key_prefix, settings.store_max_batch)


def redis_store(settings: TokenStoreSettings) -> RedisDecisionStore:
    """The Redis store alone (no failure policy); scripts are loaded on first use or NOSCRIPT."""
    layout = KeyLayout(settings.store_key_prefix, settings.store_shards)
    return RedisDecisionStore(
        redis_client(settings),
        layout,
        record_ttl_ms=settings.store_record_ttl_ms,
        max_batch=settings.store_max_batch,
        wire=fast_wire(settings),
        # The relay's reads of every shard at once: its own connection, and a budget for a
        # backlog's large replies (the failure policy bounds them the same way, ADR 0035).
        events_wire=fast_wire(settings, min_timeout_s=EVENTS_TIMEOUT_S),
    )


def decision_store(
    settings: TokenStoreSettings, on_degraded: Callable[[bool], None] | None = None
) -> DecisionStore:
    """In memory, or Redis wrapped in the failure policy of `store_failure_mode`."""
    if settings.backend is Backend.MEMORY:
        return InMemoryDecisionStore(record_ttl_ms=settings.store_record_ttl_ms)
    return resilient(redis_store(settings), settings, on_degraded)


def resilient(
    primary: DecisionStore,
    settings: TokenStoreSettings,
    on_degraded: Callable[[bool], None] | None = None,
) -> ResilientDecisionStore:
    """`primary` wrapped in the failure policy the settings describe (ADR 0021, 0054)."""
    return ResilientDecisionStore(
        primary,
        settings.failure_mode,
        timeout_s=settings.store_timeout_ms / 1000,
        recovery_s=settings.store_recovery_ms / 1000,
        trip_after_s=settings.store_trip_after_ms / 1000,
        emergency_percent=settings.store_emergency_percent,
        on_degraded=on_degraded,
    )
