"""Settings of the usage-event relay (store -> bus); the token service's settings inherit them."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from leaky_tokens.runtime.event_log_file import EventLogSettings
from leaky_tokens.runtime.settings import SettingsError, doc


class BusKind(StrEnum):
    """Where relayed events go."""

    MEMORY = "memory"  # embedded mode: the event log file (ADR 0038) and in-process subscribers
    KAFKA = "kafka"


@dataclass(frozen=True)
class RelaySettings(EventLogSettings):
    """The relay's settings; with the memory bus, the event log file's (ADR 0038)."""

    events_bus: str = field(
        default="memory",
        metadata=doc(
            "Where usage events are relayed: memory (embedded: the event log file analytics"
            " tails, and in-process subscribers) or kafka."
        ),
    )
    events_kafka_bootstrap: str = field(
        default="127.0.0.1:9092", metadata=doc("Kafka bootstrap servers (host:port,...).")
    )
    events_usage_topic: str = field(
        default="leaky.usage.v1", metadata=doc("Kafka topic of the token service's usage events.")
    )
    events_batch: int = field(default=500, metadata=doc("Most events relayed in one batch."))
    events_poll_ms: int = field(
        default=200, metadata=doc("How long the relay waits when no shard has new events.")
    )
    # 200 ms, as events_poll_ms: an event made after an empty pass already waits that long,
    # so busy passes as far apart add no worst-case delay, and each pass's fixed cost (every
    # shard read, a fsynced batch, the lease) is paid 5 times a second, not 20 (ADR 0050).
    events_pass_ms: int = field(
        default=200,
        metadata=doc(
            "Shortest time between two relay passes while events keep coming (0: back to"
            " back); each pass reads every shard once."
        ),
    )
    events_publish_timeout_ms: int = field(
        default=10_000, metadata=doc("A batch the bus has not acknowledged by then failed.")
    )
    events_backoff_ms: int = field(
        default=200, metadata=doc("First wait after a failed publish; doubles per failure.")
    )
    events_backoff_max_ms: int = field(
        default=10_000, metadata=doc("Longest wait between retries of a failed publish.")
    )
    events_lease_ttl_ms: int = field(
        default=10_000,
        metadata=doc("Redis stores: how long a relay's lease lasts unless renewed."),
    )

    def __post_init__(self) -> None:
        EventLogSettings.__post_init__(self)
        if self.events_bus not in {b.value for b in BusKind}:
            raise SettingsError(
                f"events_bus: expected one of memory, kafka, got {self.events_bus!r}"
            )
        for name in (
            "events_batch",
            "events_poll_ms",
            "events_publish_timeout_ms",
            "events_backoff_ms",
            "events_backoff_max_ms",
            "events_lease_ttl_ms",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.events_pass_ms < 0:
            raise SettingsError(f"events_pass_ms: must not be negative, got {self.events_pass_ms}")
        if self.events_backoff_max_ms < self.events_backoff_ms:
            raise SettingsError("events_backoff_max_ms: must not be below events_backoff_ms")

    @property
    def bus_kind(self) -> BusKind:
        """`events_bus` as an enum."""
        return BusKind(self.events_bus)
