"""The relay's metrics: lag, events waiting, events relayed, failures, leadership."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.registry import Collector


class RelayMetrics:
    """Relay lag (age of the oldest event not yet relayed, how many wait), events relayed,
    failures. Unregistered without a registry: the service exports `collectors`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.relayed = Counter(
            "leaky_token_events_relayed", "Usage events delivered to the bus.", registry=registry
        )
        self.failures = Counter(
            "leaky_token_events_relay_failures",
            "Failed relay steps (publish: the bus; store: reading or acknowledging).",
            ["stage"],
            registry=registry,
        )
        self.lag = Gauge(
            "leaky_token_events_relay_lag_seconds",
            "Age of the oldest usage event not yet relayed (0: none waiting).",
            registry=registry,
        )
        self.leader = Gauge(
            "leaky_token_events_relay_leader",
            "1 while this instance holds the relay lease.",
            registry=registry,
        )
        self.pending = Gauge(
            "leaky_token_events_relay_pending",
            "Usage events recorded in the store and not yet acknowledged by the bus, in the "
            "logs this instance relays.",
            registry=registry,
        )

    @property
    def collectors(self) -> tuple[Collector, ...]:
        """Every relay metric, for a registry."""
        return (self.relayed, self.failures, self.lag, self.leader, self.pending)
