"""Wiring of ShouldRateLimit for the token bootstrap: settings, config source, counter store."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc

from leaky_tokens.runtime.errors import FailedPreconditionError
from leaky_tokens.runtime.ports import Clock
from leaky_tokens.runtime.settings import SettingsError, doc
from leaky_tokens.token.adapters.config_files import load_policy, load_rate_limit_path
from leaky_tokens.token.adapters.in_memory_rate_counter import InMemoryRequestCounter
from leaky_tokens.token.adapters.settings import Backend, TokenStoreSettings
from leaky_tokens.token.adapters.store_factory import (
    decision_store,
    redis_counter,
    redis_store,
    resilient,
)
from leaky_tokens.token.adapters.watched_config import WatchedConfig
from leaky_tokens.token.domain.decision import Allowed, Denied
from leaky_tokens.token.domain.policy import Policy
from leaky_tokens.token.domain.policy_parse import DEFAULT_POLICY
from leaky_tokens.token.domain.ports import DecisionStore
from leaky_tokens.token.domain.rate_counter import RequestCounterStore
from leaky_tokens.token.domain.rls_config import RateLimitConfig
from leaky_tokens.token.domain.rls_tokens import TokenCharge, TokenDescriptors
from leaky_tokens.token.rls_lane import rls_lane
from leaky_tokens.token.rls_servicer import RLS_SERVICE, SHOULD_RATE_LIMIT, RateLimitServicer

SHIPPED_POLICY = Path(__file__).with_name(DEFAULT_POLICY)
RLS_SERVICE_NAME = RLS_SERVICE.full_name
# Envoy's ratelimit filter calls without a user JWT: public to the interceptor, and reachable
# only on the token service's own port, which the gateway never routes to (ADR 0025).
RLS_PUBLIC_METHODS = frozenset({SHOULD_RATE_LIMIT})
# The input limit on a server without our interceptor (ours binds its max_message_bytes).
UNBOUND_MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class RlsSettings:
    """ShouldRateLimit settings (LEAKY_TOKEN_RLS_*); counters live where store_backend says."""

    rls_config: str = field(
        default="",
        metadata=doc(
            "envoyproxy/ratelimit config file, or a directory of *.yaml, loaded unchanged; "
            "empty = the policy file's rate_limits."
        ),
    )
    rls_merge_domains: bool = field(
        default=False,
        metadata=doc("Allow one domain across several rls_config files (MERGE_DOMAIN_CONFIG)."),
    )
    rls_response_headers: bool = field(
        default=True,
        metadata=doc("Answer X-RateLimit-* and IETF RateLimit / RateLimit-Policy headers."),
    )
    rls_batch_interval_us: int = field(
        default=2000,
        metadata=doc(
            "While busy, send the request counters' Redis batch at most this often "
            "(microseconds; a request after a quiet interval goes at once); 0 = every "
            "loop turn."
        ),
    )

    def __post_init__(self) -> None:
        if not 0 <= self.rls_batch_interval_us <= 100_000:
            raise SettingsError(
                f"rls_batch_interval_us: 0 to 100000, got {self.rls_batch_interval_us}"
            )


def policy_source(policy: Callable[[], Policy] | None) -> Callable[[], Policy]:
    """The policy in force: the bootstrap's (reloaded), else the shipped one, read once."""
    if policy is not None:
        return policy
    shipped = load_policy(SHIPPED_POLICY)
    return lambda: shipped


def rls_config_file(settings: RlsSettings) -> WatchedConfig[RateLimitConfig] | None:
    """The rls_config file or directory, loaded now (PolicyError names file:line), or None.

    The bootstrap reloads it with the policy file: on SIGHUP and on change (ADR 0031).
    """
    if not settings.rls_config:
        return None
    merge = settings.rls_merge_domains

    def load(path: Path) -> RateLimitConfig:
        return load_rate_limit_path(path, merge_domains=merge)

    return WatchedConfig(Path(settings.rls_config), load, "rls_config")


# The policy snapshot one ShouldRateLimit matched its rules in (each RPC runs in a task of
# its own, so a value set here is that request's alone).
_MATCHED: ContextVar[Policy | None] = ContextVar("leaky_rls_policy", default=None)


def config_source(
    watched: WatchedConfig[RateLimitConfig] | None, policy: Callable[[], Policy]
) -> Callable[[], RateLimitConfig]:
    """The descriptor rules in force: the rls_config files as last (re)loaded, else the
    policy's `rate_limits` as the policy source has it now (its reloads apply)."""
    if watched is not None:
        return lambda: watched.current

    def rules() -> RateLimitConfig:
        snapshot = policy()
        _MATCHED.set(snapshot)
        return snapshot.rate_limits

    return rules


def token_policy(
    watched: WatchedConfig[RateLimitConfig] | None, policy: Callable[[], Policy]
) -> Callable[[], Policy]:
    """The policy token descriptors are charged by: with the policy's own rules, the snapshot
    the request matched them in, so a reload between matching and charging cannot mix two
    policies in one decision (ADR 0031); with rls_config files (no token rules), the policy."""
    if watched is not None:
        return policy

    def matched() -> Policy:
        snapshot = _MATCHED.get()
        return snapshot if snapshot is not None else policy()

    return matched


def rate_counter(settings: TokenStoreSettings) -> RequestCounterStore:
    """In memory, or on the decision store's Redis (its own connections, same timeout),
    its batches spaced by `rls_batch_interval_us` when the settings carry it (the token
    service's do; ADR 0034)."""
    if settings.backend is Backend.MEMORY:
        return InMemoryRequestCounter()
    counter = redis_counter(settings)
    if isinstance(settings, RlsSettings):
        counter.space_batches(settings.rls_batch_interval_us / 1_000_000)
    return counter


@dataclass
class RlsWiring:
    """The built servicer, how to register it, what to close at shutdown, and the config
    file to reload (None: the rules come from the policy file)."""

    servicer: RateLimitServicer
    close: Callable[[], Awaitable[None]]
    config_file: WatchedConfig[RateLimitConfig] | None = None

    def register(self, server: grpc.aio.Server) -> None:
        # As the generated add_..._to_server, but bytes in and out (a request seen before is
        # answered without parsing it, ADR 0029) on a lane of its own that does the
        # interceptor's per-call work inline (ADR 0034).
        lane = rls_lane(SHOULD_RATE_LIMIT, self.servicer.answer_wire, UNBOUND_MAX_BYTES)
        # An OwnLane is shaped as an RpcMethodHandler (grpc reads only its attributes).
        handlers = {"ShouldRateLimit": cast("grpc.RpcMethodHandler[Any, Any]", lane)}
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(RLS_SERVICE_NAME, handlers),)
        )
        # grpc-stubs does not know it yet; grpcio >= 1.62 routes registered methods faster.
        server.add_registered_method_handlers(RLS_SERVICE_NAME, handlers)  # type: ignore[attr-defined]


def _decision_store(
    settings: TokenStoreSettings, closers: list[Callable[[], Awaitable[None]]]
) -> DecisionStore:
    """The store store_backend names (as the bootstrap builds it), keeping Redis's close."""
    if settings.backend is Backend.MEMORY:
        return decision_store(settings)
    primary = redis_store(settings)
    closers.append(primary.close)
    return resilient(primary, settings)


class UnsharedTokens(TokenDescriptors):
    """Token descriptors in a ShouldRateLimit-only process on the memory store (ADR 0047):
    its buckets would be its own, not the ones Consume charges, so each such request is
    refused, saying where to ask instead, rather than counted where nothing else looks."""

    def __init__(self) -> None:  # nothing to charge
        pass

    async def charge(
        self, charges: Mapping[int, TokenCharge], now_ms: int
    ) -> dict[int, Allowed | Denied]:
        raise FailedPreconditionError(
            "token_bucket descriptors need the token service's store: this ShouldRateLimit-"
            "only process keeps its counters in memory (store_backend=memory); ask the token "
            "service's own port, or run both on redis"
        )


def build_rls(
    settings: RlsSettings,
    store_settings: TokenStoreSettings,
    clock: Clock,
    *,
    config_file: WatchedConfig[RateLimitConfig] | None,
    policy: Callable[[], Policy] | None = None,
    counter: RequestCounterStore | None = None,
    store: DecisionStore | None = None,
    shared_store: bool = True,
) -> RlsWiring:
    """ShouldRateLimit over `config_file` (`rls_config_file(settings)`, read by the caller
    before it opens any connection; None: the policy's own rules) and `counter` (default: the
    one store_backend names); token descriptors charge `store`, which should be the
    bootstrap's own decision store (default: one built from the same settings). Without
    `shared_store` (a ShouldRateLimit-only process on the memory store) token descriptors
    are refused: `UnsharedTokens`."""
    closers: list[Callable[[], Awaitable[None]]] = []
    counter = counter or rate_counter(store_settings)
    closers.append(counter.close)
    source = policy_source(policy)
    tokens: TokenDescriptors
    if not shared_store:
        tokens = UnsharedTokens()
    else:
        if store is None:
            store = _decision_store(store_settings, closers)
        tokens = TokenDescriptors(
            store, token_policy(config_file, source), lambda: uuid.uuid4().hex
        )
    servicer = RateLimitServicer(
        config_source(config_file, source),
        counter,
        clock,
        headers=settings.rls_response_headers,
        tokens=tokens,
    )

    async def close() -> None:
        for closer in reversed(closers):
            await closer()

    return RlsWiring(servicer, close, config_file)
