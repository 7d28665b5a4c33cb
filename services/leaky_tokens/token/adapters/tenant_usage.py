"""Opt-in per-tenant token usage with bounded cardinality: the top N tenants, nothing more."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

MAX_TOP_N = 100  # at most this many tenant series, whatever the setting asks
TRACKED_PER_SERIES = 10  # tenants counted per exported series (the heavy-hitter table)


class TenantUsage:
    """Tokens admitted per tenant, exported for the `top_n` largest only (ADR 0030).

    Counting every tenant would grow without bound, so this is the space-saving sketch
    (Metwally et al.): a table of `10 * top_n` counters; a tenant not in a full table takes
    the smallest counter's place and inherits its count. Any tenant whose true usage exceeds
    total/table-size is in the table, and a count overestimates by at most the count it
    inherited (exported as `leaky_token_tenant_tokens_error`). Series come and go as the
    ranking changes, so they are gauges; `other` carries everything outside the top N.
    """

    def __init__(self, top_n: int) -> None:
        if not 0 < top_n <= MAX_TOP_N:
            raise ValueError(f"top_n must be 1 to {MAX_TOP_N}, got {top_n}")
        self.top_n = top_n
        self.capacity = top_n * TRACKED_PER_SERIES
        self._counts: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self._total = 0
        # The scrape runs on the metrics server's thread, the counting on the event loop.
        self._lock = threading.Lock()

    def add(self, tenant: str, tokens: int) -> None:
        """Count `tokens` admitted for `tenant`."""
        with self._lock:
            self._total += tokens
            counts = self._counts
            if tenant in counts:
                counts[tenant] += tokens
                return
            inherited = 0
            if len(counts) >= self.capacity:  # O(capacity), only when a new tenant arrives
                smallest = min(counts, key=counts.__getitem__)
                inherited = counts.pop(smallest)
                self._errors.pop(smallest, None)
            counts[tenant] = inherited + tokens
            if inherited:
                self._errors[tenant] = inherited

    @property
    def tracked(self) -> int:
        """Tenants counted now (at most `capacity`)."""
        return len(self._counts)

    def top(self) -> list[tuple[str, int, int]]:
        """(tenant, tokens, overestimate at most) of the top N, largest first."""
        with self._lock:
            ranked = sorted(self._counts.items(), key=lambda kv: kv[1], reverse=True)
            return [(t, n, self._errors.get(t, 0)) for t, n in ranked[: self.top_n]]

    def describe(self) -> list[Metric]:
        """No fixed series: the registry must not call collect() at registration."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The top N tenants' tokens, their error bounds, and the rest as `other`."""
        top = self.top()
        with self._lock:
            total = self._total
        tokens = GaugeMetricFamily(
            "leaky_token_tenant_tokens",
            f"Tokens admitted since start for the top {self.top_n} tenants (approximate: "
            "see _error); tenant=other is everyone else.",
            labels=["tenant"],
        )
        error = GaugeMetricFamily(
            "leaky_token_tenant_tokens_error",
            "How much leaky_token_tenant_tokens may overestimate the tenant (0: exact).",
            labels=["tenant"],
        )
        for tenant, count, err in top:
            tokens.add_metric([tenant], count)
            error.add_metric([tenant], err)
        tokens.add_metric(["other"], max(0, total - sum(count for _, count, _ in top)))
        yield tokens
        yield error
