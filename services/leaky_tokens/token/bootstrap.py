"""Composition root of the token service."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import grpc

from leaky.token.v1 import token_pb2_grpc
from leaky_tokens.runtime.jwt_verifier import JwksFetcher
from leaky_tokens.runtime.membership import GrpcMembership
from leaky_tokens.runtime.peer_service import PeerComponents, PeerSettings, peer_components
from leaky_tokens.runtime.ports import Clock, Randomness
from leaky_tokens.runtime.server import ServiceSpec
from leaky_tokens.runtime.settings import SettingsError, doc
from leaky_tokens.runtime.system import SystemClock, SystemRandomness
from leaky_tokens.token.adapters.event_bus import EventBus
from leaky_tokens.token.adapters.grpc_chat_provider import GrpcChatProvider, Resilience
from leaky_tokens.token.adapters.metered_store import MeteredDecisionStore, MeteredRequestCounter
from leaky_tokens.token.adapters.policy_file import PolicyFile
from leaky_tokens.token.adapters.purchase_settings import PurchaseSagaSettings
from leaky_tokens.token.adapters.relay_factory import build_relay
from leaky_tokens.token.adapters.relay_settings import BusKind, RelaySettings
from leaky_tokens.token.adapters.reservation_sweeper import ReservationSweeper
from leaky_tokens.token.adapters.resilient_decision_store import ResilientDecisionStore
from leaky_tokens.token.adapters.saga_embedded import EmbeddedSaga, purchase_saga
from leaky_tokens.token.adapters.settings import Backend, FailureMode
from leaky_tokens.token.adapters.sql_saga_store import SqlSagaStore
from leaky_tokens.token.adapters.store_factory import decision_store, redis_store, resilient
from leaky_tokens.token.adapters.tenant_usage import MAX_TOP_N
from leaky_tokens.token.adapters.token_metrics import Rpc, TokenMetrics
from leaky_tokens.token.adapters.watched_config import Reloadable, Reloader, WatchedConfig
from leaky_tokens.token.domain.access import Limits
from leaky_tokens.token.domain.metering import Metering
from leaky_tokens.token.domain.peers import ChatProvider, Membership
from leaky_tokens.token.domain.policy_parse import DEFAULT_POLICY, PolicyError
from leaky_tokens.token.domain.ports import DecisionStore
from leaky_tokens.token.domain.purchases import Purchases
from leaky_tokens.token.domain.rls_config import RateLimitConfig
from leaky_tokens.token.domain.saga_ports import PaymentGateway
from leaky_tokens.token.domain.units import to_ms
from leaky_tokens.token.rls_wiring import (  # RLS (ADR 0025)
    RLS_PUBLIC_METHODS,
    RLS_SERVICE_NAME,
    RlsSettings,
    RlsWiring,
    build_rls,
    rate_counter,
    rls_config_file,
)
from leaky_tokens.token.servicer import PENDING, PUBLIC_METHODS, TOKEN_SERVICE, TokenServicer

ENV_PREFIX = "LEAKY_TOKEN"
SHIPPED_POLICY = Path(__file__).with_name(DEFAULT_POLICY)
# What one process serves (`serve`): everything, or ShouldRateLimit alone (ADR 0047).
SERVE_ALL = "all"
SERVE_RLS = "rls"
RLS_SLUG = "ratelimit"  # the rls deployment's Consul service, metrics and logs name
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenSettings(PeerSettings, PurchaseSagaSettings, RlsSettings, RelaySettings):
    """Token service settings (LEAKY_TOKEN_<FIELD>); the store_* ones are the store's, the
    database_url and saga_* ones the purchase saga's (shared with the saga worker)."""

    port: int = field(default=50052, metadata=doc("gRPC port."))
    serve: str = field(
        default=SERVE_ALL,
        metadata=doc(
            "What this process serves: all (TokenService and ShouldRateLimit) or rls "
            "(ShouldRateLimit alone, registered in Consul as ratelimit: the deployment "
            "Envoy's edge limits ask, ADR 0047)."
        ),
    )
    metrics_port: int = field(default=9102, metadata=doc("Prometheus /metrics port; 0 disables."))
    policy_poll_seconds: float = field(
        default=1.0,
        metadata=doc("How often the policy file's mtime is checked for a reload; 0 = SIGHUP only."),
    )
    provider_target: str = field(
        default="127.0.0.1:50054", metadata=doc("host:port of the provider service.")
    )
    provider_timeout_seconds: float = field(
        default=2.0, metadata=doc("Deadline of one provider call attempt.")
    )
    provider_attempts: int = field(
        default=3,
        metadata=doc("Provider call attempts (retried on UNAVAILABLE/DEADLINE_EXCEEDED)."),
    )
    provider_backoff_seconds: float = field(
        default=0.05, metadata=doc("Base of the jittered exponential backoff between attempts.")
    )
    provider_backoff_max_seconds: float = field(
        default=1.0, metadata=doc("Longest backoff between two attempts.")
    )
    provider_breaker_failures: int = field(
        default=5, metadata=doc("Failed provider calls in a row that open the circuit.")
    )
    provider_breaker_reset_seconds: float = field(
        default=10.0, metadata=doc("How long an open circuit refuses before one trial call.")
    )
    provider_max_concurrent: int = field(
        default=64, metadata=doc("Provider calls in flight at most; more are refused (503).")
    )
    membership_cache_seconds: float = field(
        default=5.0,
        metadata=doc(
            "Org membership answers from auth are reused this long: a removed member is "
            "refused at most this many seconds after the removal."
        ),
    )
    max_request_tokens: int = field(
        default=10_000_000, metadata=doc("Largest token count one request may name.")
    )
    max_reservation_seconds: float = field(
        default=900.0, metadata=doc("Longest (and default) time a reservation is held.")
    )
    metrics_tenant_top_n: int = field(
        default=0,
        metadata=doc(
            "Export the token usage of the N heaviest tenants (leaky_token_tenant_tokens, "
            f"approximate top-N, at most {MAX_TOP_N}); 0 = no per-tenant series (ADR 0030)."
        ),
    )

    def __post_init__(self) -> None:
        PurchaseSagaSettings.__post_init__(self)  # the store's settings too
        RelaySettings.__post_init__(self)
        RlsSettings.__post_init__(self)
        if self.serve not in (SERVE_ALL, SERVE_RLS):
            raise SettingsError(f"serve: {SERVE_ALL} or {SERVE_RLS}, got {self.serve!r}")
        if not 0 <= self.metrics_tenant_top_n <= MAX_TOP_N:
            raise SettingsError(
                f"metrics_tenant_top_n: must be 0 to {MAX_TOP_N}, got {self.metrics_tenant_top_n}"
            )


@dataclass
class TokenComponents(PeerComponents):
    """The built token service and what it must close."""

    policy: PolicyFile | None = None
    metering: Metering | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    rls_config: WatchedConfig[RateLimitConfig] | None = None  # reloaded with the policy
    purchases: SqlSagaStore | None = None  # the purchase sagas' store
    saga: EmbeddedSaga | None = None  # the saga run here (saga_runner=embedded)

    async def close(self) -> None:
        """Stop the background tasks, then close every connection this build opened."""
        for closer in reversed(self.closers):
            await closer()
        await super().close()


async def build(
    settings: TokenSettings,
    *,
    clock: Clock | None = None,
    ids: Randomness | None = None,
    jwks: JwksFetcher | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    store: DecisionStore | None = None,
    policy: PolicyFile | None = None,
    membership: Membership | None = None,
    provider: ChatProvider | None = None,
    bus: EventBus | None = None,
    payment: PaymentGateway | None = None,
) -> TokenComponents:
    """Wire the token service; collaborators default to the real ones.

    `clock` tells the time; `jwks` fetches the auth service's signing keys (default: gRPC to
    `settings.auth_target`) and `monotonic` ages the cached key set and the membership cache;
    `store` to the one `store_backend` names (ADR 0021), `policy` to the policy
    file, `membership` to the auth service, `provider` to the provider service, `bus` to the
    one `events_bus` names (in-process, or Kafka with --stack; ADR 0024), `payment` to
    the payment stub of the saga_payment_* settings (ADR 0032).
    """
    clock = clock or SystemClock()
    if settings.serve == SERVE_RLS:
        return _build_rls_only(
            settings, clock, jwks=jwks, monotonic=monotonic, store=store, policy=policy
        )
    closers: list[Callable[[], Awaitable[None]]] = []
    metrics = TokenMetrics(tenant_top_n=settings.metrics_tenant_top_n)
    watched: list[Reloadable] = []  # reloaded on SIGHUP and on change, by one Reloader
    policy = _policy(settings, policy, watched)
    try:  # before any connection opens: a bad file stops the service with one line
        rls_config = rls_config_file(settings)
    except PolicyError as error:
        raise SystemExit(f"token: bad rls_config: {error}") from None
    if store is None:
        store = _store(settings, closers)
    if isinstance(store, ResilientDecisionStore):
        store.listen(metrics.watch_degraded(store.mode.value))
    # Decisions are counted and timed at the store boundary, each RPC's own (ADR 0030).
    metered = MeteredDecisionStore(store, metrics, Rpc.CONSUME)
    if membership is None:
        grpc_members = GrpcMembership(
            settings.auth_target, settings.membership_cache_seconds, monotonic=monotonic
        )
        membership = grpc_members
        closers.append(grpc_members.close)
    if provider is None:
        grpc_provider = GrpcChatProvider.connect(
            settings.provider_target, _resilience(settings), monotonic
        )
        provider = grpc_provider
        closers.append(grpc_provider.close)
    # Expired reservations are released by the service itself, not by a caller that died.
    sweeper = ReservationSweeper(
        metered, lambda: to_ms(clock.now()), settings.store_sweep_interval_ms / 1000
    )
    sweeper.start()
    closers.append(sweeper.stop)
    # Every recorded event leaves the store through the relay, at least once (ADR 0024).
    relay = build_relay(settings, settings, store, bus, now_ms=lambda: to_ms(clock.now()))
    relay.start()
    closers.append(relay.stop)
    metering = Metering(
        policy=policy,
        store=metered,
        membership=membership,
        provider=provider,
        clock=clock,
        ids=ids or SystemRandomness(),
        limits=Limits(settings.max_request_tokens),
        max_reservation_ttl=timedelta(seconds=settings.max_reservation_seconds),
    )
    # Embedded, the saga's events also go to the event log file analytics tails (ADR 0038).
    log = None if settings.bus_kind is BusKind.KAFKA else settings
    saga_store, saga = await purchase_saga(settings, clock, store, policy, payment, closers, log)
    purchases = Purchases(
        store=saga_store, policy=policy, membership=membership, clock=clock,
        ids=ids or SystemRandomness(), limits=Limits(settings.max_request_tokens),
        on_started=saga.kick if saga is not None else lambda: None,
    )  # fmt: skip
    token = TokenServicer(clock, metering, purchases)
    rls = _rls_reloaded(settings, clock, rls_config, policy, metrics, store, watched, closers)

    def register(server: grpc.aio.Server) -> None:
        token_pb2_grpc.add_TokenServiceServicer_to_server(token, server)
        rls.register(server)  # RLS (ADR 0025)

    spec = ServiceSpec(
        "token",
        (TOKEN_SERVICE.full_name, RLS_SERVICE_NAME),  # RLS: served and described by reflection
        register,
        PUBLIC_METHODS | RLS_PUBLIC_METHODS,  # RLS: Envoy calls without a JWT (ADR 0025)
        unimplemented_reason=PENDING,
        collectors=(
            *metrics.collectors,
            *relay.metrics.collectors,
            rls.servicer.metrics.shadow,
            *(saga.parts.collectors if saga is not None else ()),
        ),
    )
    peer = peer_components(settings, spec, jwks=jwks, monotonic=monotonic)
    return TokenComponents(
        peer.spec, peer.verifier, peer.owned_jwks, policy, metering, closers, rls.config_file,
        saga_store, saga,
    )  # fmt: skip


def _policy(
    settings: TokenSettings, policy: PolicyFile | None, watched: list[Reloadable]
) -> PolicyFile:
    """The caller's policy, or the policy file (reloaded: added to `watched`)."""
    if policy is not None:
        return policy
    try:
        found = PolicyFile(Path(settings.policy_file or SHIPPED_POLICY))
    except PolicyError as error:  # one line naming file:line, not a traceback
        raise SystemExit(f"token: bad policy file: {error}") from None
    watched.append(found)
    return found


def _build_rls_only(
    settings: TokenSettings,
    clock: Clock,
    *,
    jwks: JwksFetcher | None,
    monotonic: Callable[[], float],
    store: DecisionStore | None,
    policy: PolicyFile | None,
) -> TokenComponents:
    """ShouldRateLimit alone (serve=rls, ADR 0047): the same policy file, rls_config and
    store settings as the token service, so the same rules and, on Redis, the same counters
    and buckets; no TokenService, relay, sweeper, saga, membership or provider.

    On the memory store the request counters are this process's own (Envoy asks only this
    deployment, so the edge's counts are still in one place), but token_bucket descriptors
    would charge buckets Consume never sees: they are refused (FAILED_PRECONDITION).
    """
    closers: list[Callable[[], Awaitable[None]]] = []
    metrics = TokenMetrics()
    watched: list[Reloadable] = []
    policy = _policy(settings, policy, watched)
    try:
        rls_config = rls_config_file(settings)
    except PolicyError as error:
        raise SystemExit(f"{RLS_SLUG}: bad rls_config: {error}") from None
    shared = store is not None or settings.backend is not Backend.MEMORY
    if store is None and shared:
        # No relay runs here: fail_open and local_emergency would keep the events of token
        # decisions made while Redis is down in a local store nobody ships. Such decisions
        # fail closed instead (the edge's own descriptors are request counters, unaffected).
        store = _store(replace(settings, store_failure_mode=FailureMode.FAIL_CLOSED), closers)
    if isinstance(store, ResilientDecisionStore):
        store.listen(metrics.watch_degraded(store.mode.value))
    rls = _rls_reloaded(
        settings, clock, rls_config, policy, metrics, store, watched, closers, shared=shared
    )
    spec = ServiceSpec(
        RLS_SLUG,
        (RLS_SERVICE_NAME,),
        rls.register,
        RLS_PUBLIC_METHODS,
        collectors=(*metrics.collectors, rls.servicer.metrics.shadow),
    )
    peer = peer_components(settings, spec, jwks=jwks, monotonic=monotonic)
    return TokenComponents(
        peer.spec, peer.verifier, peer.owned_jwks, policy, None, closers, rls.config_file
    )


def _rls_reloaded(
    settings: TokenSettings,
    clock: Clock,
    rls_config: WatchedConfig[RateLimitConfig] | None,
    policy: PolicyFile,
    metrics: TokenMetrics,
    store: DecisionStore | None,
    watched: list[Reloadable],
    closers: list[Callable[[], Awaitable[None]]],
    *,
    shared: bool = True,
) -> RlsWiring:
    """ShouldRateLimit (ADR 0025) on the policy and rls_config, metered, closed at shutdown,
    and the reloader of every watched file (the policy's and rls_config) started."""
    rls = build_rls(
        settings,
        settings,
        clock,
        config_file=rls_config,
        policy=lambda: policy.current,
        counter=MeteredRequestCounter(rate_counter(settings), metrics),
        store=None
        if store is None
        else MeteredDecisionStore(store, metrics, Rpc.SHOULD_RATE_LIMIT),
        shared_store=shared,
    )
    closers.append(rls.close)
    if rls.config_file is not None:
        watched.append(rls.config_file)
    reloader = Reloader(watched)
    reloader.start(settings.policy_poll_seconds)
    closers.append(reloader.stop)
    return rls


def _store(settings: TokenSettings, closers: list[Callable[[], Awaitable[None]]]) -> DecisionStore:
    """The store `store_backend` names; Redis wrapped in the failure policy (ADR 0021).

    As store_factory.decision_store, keeping the Redis store's close for shutdown.
    """
    if settings.backend is Backend.MEMORY:
        return decision_store(settings)
    primary = redis_store(settings)
    closers.append(primary.close)

    def degraded(now: bool) -> None:
        log.warning("decision store %s", "degraded" if now else "recovered")

    return resilient(primary, settings, degraded)


def _resilience(settings: TokenSettings) -> Resilience:
    return Resilience(
        timeout_seconds=settings.provider_timeout_seconds,
        attempts=settings.provider_attempts,
        backoff_seconds=settings.provider_backoff_seconds,
        backoff_max_seconds=settings.provider_backoff_max_seconds,
        breaker_failures=settings.provider_breaker_failures,
        breaker_reset_seconds=settings.provider_breaker_reset_seconds,
        max_concurrent=settings.provider_max_concurrent,
    )
