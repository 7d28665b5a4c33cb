"""The token service's Prometheus metrics: decisions, store latency, degraded mode, tenants."""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import Counter, Gauge
from prometheus_client.registry import Collector

from leaky_tokens.token.adapters.hot_metrics import HotMetrics, Tally, Timings
from leaky_tokens.token.adapters.tenant_usage import TenantUsage

# Store calls are one Redis round trip (tens of microseconds on loopback) bounded by
# store_timeout_ms; few buckets keep observe() cheap on the hot path.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Rpc(StrEnum):
    """The call a decision belongs to (the `rpc` label)."""

    CONSUME = "consume"
    RESERVE = "reserve"
    SETTLE = "settle"
    RELEASE = "release"
    SHOULD_RATE_LIMIT = "should_rate_limit"


class Outcome(StrEnum):
    """What a decision did (the `outcome` label)."""

    ALLOWED = "allowed"
    DENIED = "denied"
    REPLAYED = "replayed"  # an idempotent retry answered with the first outcome
    REFUNDED = "refunded"  # the provider call failed: every debit given back
    SETTLED = "settled"
    RELEASED = "released"
    EXPIRED = "expired"  # released by the store's sweeper
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"  # the store failed and the failure mode refused


# `level` values beyond the store's levels (decision.Level: user_bucket ... org_quota).
PURCHASED = "purchased"  # the window was spent: a purchased balance paid
DESCRIPTOR = "descriptor"  # a ShouldRateLimit request-count descriptor
ALL = "all"  # a call on every level of a decision (refund, settle, release, store failure)
NO_PROVIDER = "none"


class Operation(StrEnum):
    """A timed store call (the `operation` label of the latency histogram)."""

    DECIDE = "decide"
    RESERVE = "reserve"
    SETTLE = "settle"
    RELEASE = "release"
    REFUND = "refund"
    CREDIT = "credit"
    READ = "read"
    SWEEP = "sweep"
    RLS_HIT = "rls_hit"


class TokenMetrics:
    """Every token metric, unregistered: the server registers `collectors` (ServiceSpec).

    The per-decision ones are lock-free (hot_metrics) and their series are bound once: a
    decision costs a dict lookup, an int increment and a bisection, never a labels() call.
    """

    def __init__(self, *, tenant_top_n: int = 0) -> None:
        self.hot = HotMetrics(
            (
                "leaky_token_decisions",
                "Token decisions by rpc, provider, deciding level and outcome (one each).",
                ("rpc", "provider", "level", "outcome"),
            ),
            (
                "leaky_token_store_latency_seconds",
                "Decision store calls by operation, as the caller waited (fallback included).",
                "operation",
                LATENCY_BUCKETS,
            ),
        )
        self.degraded = Gauge(
            "leaky_token_store_degraded",
            "1 while the decision store answers from its failure mode (Redis unreachable).",
            ["mode"],
            registry=None,
        )
        self.degraded_transitions = Counter(
            "leaky_token_store_degraded_transitions",
            "Changes of the store's degraded state, by the state entered.",
            ["to"],
            registry=None,
        )
        self.tenants = TenantUsage(tenant_top_n) if tenant_top_n else None
        self.latency: dict[Operation, Timings] = {op: self.hot.timings(op) for op in Operation}

    def decision(self, rpc: str, provider: str, level: str, outcome: str) -> Tally:
        """The series of one label set (bounded: providers come from the policy or the
        rate-limit config, the other labels from the enums above)."""
        return self.hot.tally((rpc, provider, level, outcome))

    def watch_degraded(self, mode: str) -> DegradedHook:
        """The hook a ResilientDecisionStore calls on each change; the gauge starts at 0."""
        return DegradedHook(self, mode)

    @property
    def collectors(self) -> tuple[Collector, ...]:
        """What the server's registry exports."""
        own: tuple[Collector, ...] = (self.hot, self.degraded, self.degraded_transitions)
        return own if self.tenants is None else (*own, self.tenants)


class DegradedHook:
    """Sets the degraded gauge of one mode and counts the transitions."""

    def __init__(self, metrics: TokenMetrics, mode: str) -> None:
        self._gauge = metrics.degraded.labels(mode)
        self._gauge.set(0)
        self._to = {
            True: metrics.degraded_transitions.labels("degraded"),
            False: metrics.degraded_transitions.labels("recovered"),
        }

    def __call__(self, degraded: bool) -> None:
        self._gauge.set(1 if degraded else 0)
        self._to[degraded].inc()
