"""Composition root of the analytics service."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from prometheus_client.registry import Collector

from leaky.analytics.v1 import analytics_pb2_grpc
from leaky_tokens.analytics.adapters.cassandra_settings import CassandraStoreSettings
from leaky_tokens.analytics.adapters.cassandra_usage_store import CassandraUsageStore
from leaky_tokens.analytics.adapters.log_tailer import (
    EmbeddedProjectionSettings,
    embedded_projection,
)
from leaky_tokens.analytics.domain.ports import UsageStore
from leaky_tokens.analytics.domain.reports import Queries
from leaky_tokens.analytics.servicer import ANALYTICS_SERVICE, PUBLIC_METHODS, AnalyticsServicer
from leaky_tokens.runtime.jwt_verifier import JwksFetcher
from leaky_tokens.runtime.membership import GrpcMembership
from leaky_tokens.runtime.peer_service import PeerComponents, PeerSettings, peer_components
from leaky_tokens.runtime.ports import Clock, Membership
from leaky_tokens.runtime.server import ServiceSpec
from leaky_tokens.runtime.settings import SettingsError, doc
from leaky_tokens.runtime.system import SystemClock

log = logging.getLogger(__name__)

ENV_PREFIX = "LEAKY_ANALYTICS"


STORES = ("sqlite", "cassandra")


@dataclass(frozen=True)
class AnalyticsSettings(PeerSettings, EmbeddedProjectionSettings, CassandraStoreSettings):
    """Analytics service settings (LEAKY_ANALYTICS_<FIELD>)."""

    port: int = field(default=50053, metadata=doc("gRPC port."))
    metrics_port: int = field(default=9103, metadata=doc("Prometheus /metrics port; 0 disables."))
    membership_cache_seconds: float = field(
        default=5.0,
        metadata=doc(
            "Org membership answers from auth are reused this long: a removed member can "
            "read the organization's usage at most this many seconds after the removal."
        ),
    )
    store: str = field(
        default="sqlite",
        metadata=doc(
            "Where usage is read: sqlite (embedded: this service also tails the token "
            "service's event log file into it) or cassandra (the projection worker writes it)."
        ),
    )

    def __post_init__(self) -> None:
        EmbeddedProjectionSettings.__post_init__(self)
        CassandraStoreSettings.__post_init__(self)
        if self.store not in STORES:
            raise SettingsError(f"store: expected one of {', '.join(STORES)}, got {self.store!r}")


@dataclass
class AnalyticsComponents(PeerComponents):
    """The built analytics service and what it must close."""

    store: UsageStore | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        """Close the usage store and the channels this build opened, newest first; one that
        fails is logged and the rest are closed anyway (a Cassandra that will not shut down
        cleanly must not leave the auth channels open)."""
        for closer in reversed(self.closers):
            try:
                await closer()
            except Exception:
                log.exception("analytics: closing a resource failed; closing the rest")
        await super().close()


async def build(
    settings: AnalyticsSettings,
    *,
    clock: Clock | None = None,
    jwks: JwksFetcher | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    store: UsageStore | None = None,
    membership: Membership | None = None,
) -> AnalyticsComponents:
    """Wire the analytics service; collaborators default to the real ones.

    `clock` tells the time, `jwks` fetches the auth service's signing keys (default: gRPC to
    `settings.auth_target`) and `monotonic` ages the cached key set and the membership cache;
    `store` is where the projection's usage is read (default: as `settings.store` says, the
    embedded SQLite store fed by the event log tailer, or Cassandra; a store this build makes
    is closed on shutdown, one passed in is the caller's to close);
    `membership` answers org membership (default: the auth service, as the token service).
    """
    clock = clock or SystemClock()
    closers: list[Callable[[], Awaitable[None]]] = []
    collectors: tuple[Collector, ...] = ()
    if store is None and settings.store == "cassandra":
        cassandra = CassandraUsageStore(settings)
        closers.append(cassandra.close)
        store = cassandra  # connects on first use: the service starts while Cassandra is down
    elif store is None:
        projection = await embedded_projection(settings)
        closers.append(projection.close)
        collectors = projection.collectors
        projection.start()
        store = projection.store
    if membership is None:
        grpc_members = GrpcMembership(
            settings.auth_target, settings.membership_cache_seconds, monotonic=monotonic
        )
        membership = grpc_members
        closers.append(grpc_members.close)
    servicer = AnalyticsServicer(clock, Queries(store, membership, clock))

    def register(server: grpc.aio.Server) -> None:
        analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(servicer, server)

    spec = ServiceSpec(
        "analytics",
        (ANALYTICS_SERVICE.full_name,),
        register,
        PUBLIC_METHODS,
        collectors=collectors,
    )
    peer = peer_components(settings, spec, jwks=jwks, monotonic=monotonic)
    return AnalyticsComponents(peer.spec, peer.verifier, peer.owned_jwks, store, closers)
