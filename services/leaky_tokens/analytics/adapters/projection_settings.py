"""Settings of the analytics projection worker (LEAKY_ANALYTICS_PROJECTION_*).

Kafka, retries and health are every Faust worker's (runtime/faust_worker.py); these are the
projection's own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from leaky_tokens.runtime.faust_worker import FaustWorkerSettings
from leaky_tokens.runtime.settings import SettingsError, doc

STORES = ("cassandra", "sqlite")


@dataclass(frozen=True)
class ProjectionSettings(FaustWorkerSettings):
    """The Faust projection worker: the shared worker settings, /metrics, topics, the store."""

    port: int = field(default=50056, metadata=doc("gRPC health port (0 picks a free one)."))
    metrics_port: int = field(
        default=9106, metadata=doc("Prometheus /metrics port of the projection; 0 disables.")
    )
    group: str = field(
        default="leaky-analytics-projection",
        metadata=doc("Faust app id = Kafka consumer group of the projection's agents."),
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
        default=250,
        metadata=doc(
            "How long a partial batch waits for more messages before it is projected (longer:"
            " fuller batches, less CPU per event, more lag at low rates: ADR 0055)."
        ),
    )

    POSITIVE: ClassVar[tuple[str, ...]] = ("batch_size", "batch_window_ms")
    NOT_EMPTY: ClassVar[tuple[str, ...]] = ("usage_topic", "purchase_topic", "dead_letter_topic")

    def __post_init__(self) -> None:
        super().__post_init__()
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
