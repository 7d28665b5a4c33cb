"""The projection's metrics (names fixed: the Grafana dashboard and alerts read them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.registry import Collector


class ProjectionMetrics:
    """Lag per topic, facts projected and dead letters per topic, stalled 0/1.
    Unregistered without a registry: the worker's server exports `collectors`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.lag = Gauge(
            "leaky_analytics_projection_lag_seconds",
            "Now minus the occurred_at of the last fact projected from the topic.",
            ["topic"],
            registry=registry,
        )
        self.projected = Counter(
            "leaky_analytics_projected_facts",
            "Facts handed to the usage store and stored (replays included: the store ignores"
            " a fact it has).",
            ["topic"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "leaky_analytics_dead_letters",
            "Messages of the topic that could never be projected, sent to the dead-letter topic.",
            ["topic"],
            registry=registry,
        )
        self.stalled = Gauge(
            "leaky_analytics_projection_stalled",
            "1 while the projection waits on the store (a call failed and is retried, or hangs).",
            registry=registry,
        )

    @property
    def collectors(self) -> tuple[Collector, ...]:
        """Every projection metric, for a registry."""
        return (self.lag, self.projected, self.dead_letters, self.stalled)
