"""Settings of the analytics projection worker (LEAKY_ANALYTICS_PROJECTION_*)."""

from __future__ import annotations

from dataclasses import dataclass, field

from leaky_tokens.runtime.server import ServerSettings
from leaky_tokens.runtime.settings import SettingsError, doc

STORES = ("cassandra", "sqlite")


@dataclass(frozen=True)
class ProjectionSettings(ServerSettings):
    """The Faust projection worker: gRPC health (ServerSettings), /metrics, Kafka, the store."""

    port: int = field(default=50056, metadata=doc("gRPC health port (0 picks a free one)."))
    metrics_port: int = field(
        default=9106, metadata=doc("Prometheus /metrics port of the projection; 0 disables.")
    )
    kafka_bootstrap: str = field(
        default="127.0.0.1:9092", metadata=doc("Kafka bootstrap servers (host:port,...).")
    )
    usage_topic: str = field(
        default="leaky.usage.v1",
        metadata=doc(
            "The token service's usage topic, projected; `leaky up --stack` sets it to"
            " LEAKY_TOKEN_EVENTS_USAGE_TOPIC when only that is set."
        ),
    )
    purchase_topic: str = field(
        default="leaky.purchase.v1",
        metadata=doc(
            "The purchase saga's topic, projected; `leaky up --stack` sets it to"
            " LEAKY_TOKEN_SAGA_TOPIC when only that is set."
        ),
    )
    dead_letter_topic: str = field(
        default="leaky.analytics.dead-letter.v1",
        metadata=doc(
            "Where messages that can never be projected go, with headers giving the reason,"
            " source topic, partition and offset."
        ),
    )
    topic_partitions: int = field(
        default=3, metadata=doc("Partitions a missing topic is created with.")
    )
    topic_replication: int = field(
        default=1, metadata=doc("Replication factor it is created with (1: a single broker).")
    )
    group: str = field(
        default="leaky-analytics-projection",
        metadata=doc("Faust app id = Kafka consumer group of the projection's agents."),
    )
    store: str = field(
        default="cassandra",
        metadata=doc("The usage store projected into: cassandra or sqlite (its own settings)."),
    )
    store_factory: str = field(
        default="",
        metadata=doc(
            "module:callable returning the UsageStore (or an awaitable of it); empty = the"
            " one `store` names. Tests point it at their doubles."
        ),
    )
    batch_size: int = field(
        default=1_500,
        metadata=doc(
            "Most messages of one topic projected in one store call (all its partitions';"
            " bigger batches fold more facts into each cell row: ADR 0036)."
        ),
    )
    batch_window_ms: int = field(
        default=100,
        metadata=doc("How long a partial batch waits for more messages before it is projected."),
    )
    retry_backoff_ms: int = field(
        default=100, metadata=doc("First wait before a failed store call is retried; doubles.")
    )
    retry_backoff_max_ms: int = field(
        default=5_000, metadata=doc("Longest wait between retries while the store is down.")
    )
    stuck_after_ms: int = field(
        default=30_000,
        metadata=doc(
            "Health also goes NOT_SERVING when one store call has not returned for this long"
            " (a failed call does so at once), or the consumer is not running or assigned."
        ),
    )
    health_interval_ms: int = field(
        default=500, metadata=doc("How often the worker re-evaluates its health.")
    )
    session_timeout_ms: int = field(
        default=10_000,
        metadata=doc(
            "Kafka group session timeout: a dead worker holds its partitions this long"
            " (broker minimum 6000)."
        ),
    )
    commit_interval_ms: int = field(
        default=1_000, metadata=doc("How often projected offsets are committed to Kafka.")
    )
    publish_timeout_ms: int = field(
        default=10_000,
        metadata=doc("A dead letter Kafka has not acknowledged by then is published again."),
    )

    def __post_init__(self) -> None:
        for name in (
            "topic_partitions",
            "topic_replication",
            "batch_size",
            "batch_window_ms",
            "retry_backoff_ms",
            "retry_backoff_max_ms",
            "stuck_after_ms",
            "health_interval_ms",
            "session_timeout_ms",
            "commit_interval_ms",
            "publish_timeout_ms",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.retry_backoff_max_ms < self.retry_backoff_ms:
            raise SettingsError("retry_backoff_max_ms: must not be below retry_backoff_ms")
        for name in ("kafka_bootstrap", "usage_topic", "purchase_topic", "dead_letter_topic"):
            if not getattr(self, name).strip():
                raise SettingsError(f"{name}: must not be empty")
        if not self.group.strip():
            raise SettingsError("group: must not be empty")
        topics = {self.usage_topic, self.purchase_topic, self.dead_letter_topic}
        if len(topics) != 3:
            raise SettingsError("usage_topic, purchase_topic, dead_letter_topic: must differ")
        if self.store not in STORES:
            raise SettingsError(f"store: expected one of {', '.join(STORES)}, got {self.store!r}")
        if self.store_factory:
            module, _, attr = self.store_factory.partition(":")
            if not module or not attr:
                raise SettingsError(
                    f"store_factory: expected module:callable, got {self.store_factory!r}"
                )
