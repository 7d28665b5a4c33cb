"""Build the usage-event relay the settings ask for (bootstrap and relay process call this)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from leaky_tokens.runtime.event_log_file import EventLogFile
from leaky_tokens.token.adapters.event_bus import EventBus
from leaky_tokens.token.adapters.event_relay import EventRelay, RelayMetrics
from leaky_tokens.token.adapters.file_event_bus import FileEventBus
from leaky_tokens.token.adapters.kafka_event_bus import KafkaEventBus
from leaky_tokens.token.adapters.relay_lease import RedisLease, RelayLease, SoleLease
from leaky_tokens.token.adapters.relay_settings import BusKind, RelaySettings
from leaky_tokens.token.adapters.resilient_decision_store import ResilientDecisionStore
from leaky_tokens.token.adapters.settings import Backend, TokenStoreSettings
from leaky_tokens.token.domain.ports import DecisionStore


def event_bus(settings: RelaySettings) -> EventBus:
    """Kafka, or (embedded) the event log file the analytics service tails, as `events_bus`
    says; the embedded bus also delivers to in-process subscribers (ADR 0038)."""
    if settings.bus_kind is BusKind.KAFKA:
        return KafkaEventBus(
            settings.events_kafka_bootstrap,
            timeout_s=settings.events_publish_timeout_ms / 1000,
        )
    return FileEventBus(EventLogFile.open(settings))


def relay_lease(store_settings: TokenStoreSettings, settings: RelaySettings) -> RelayLease:
    """One relay per deployment: a Redis lease beside the store's keys; in memory, this one."""
    if store_settings.backend is Backend.MEMORY:
        return SoleLease()
    timeout = max(store_settings.store_timeout_ms / 1000, 1.0)
    url = store_settings.store_redis_url
    client: Redis | RedisCluster
    if store_settings.backend is Backend.CLUSTER:
        client = RedisCluster.from_url(url, socket_timeout=timeout)
    else:
        client = Redis.from_url(url, socket_timeout=timeout)
    key = f"{store_settings.store_key_prefix}:relay:lease"
    return RedisLease(client, key, settings.events_lease_ttl_ms)


def build_relay(
    store_settings: TokenStoreSettings,
    settings: RelaySettings,
    store: DecisionStore,
    bus: EventBus | None = None,
    *,
    registry: CollectorRegistry | None = None,
    now_ms: Callable[[], int] | None = None,
    lease: RelayLease | None = None,
) -> EventRelay:
    """The relay of `store` to `bus` (default: `event_bus(settings)`); `start()` runs it.

    Pass the service's metrics registry to export the relay's lag, count and failures. The
    failure policy's last shard holds this instance's degraded-mode decisions: only this
    instance can relay it, so it is relayed with or without the lease.
    """
    own = frozenset({store.shard_count - 1}) if isinstance(store, ResilientDecisionStore) else None
    return EventRelay(
        store,
        bus if bus is not None else event_bus(settings),
        settings.events_usage_topic,
        now_ms=now_ms or (lambda: time.time_ns() // 1_000_000),
        lease=lease if lease is not None else relay_lease(store_settings, settings),
        batch=settings.events_batch,
        poll_s=settings.events_poll_ms / 1000,
        pass_s=settings.events_pass_ms / 1000,
        backoff_s=settings.events_backoff_ms / 1000,
        backoff_max_s=settings.events_backoff_max_ms / 1000,
        metrics=RelayMetrics(registry),
        own_shards=own or frozenset(),
    )
