"""Settings of the saga worker process (LEAKY_TOKEN_SAGA_*): Kafka, retries, health, parts."""

from __future__ import annotations

from dataclasses import dataclass, field

from leaky_tokens.runtime.server import ServerSettings
from leaky_tokens.runtime.settings import SettingsError, doc

# Where the saga's real participants, outbox and recovery come from (saga_worker.py).
REAL_PARTS = "leaky_tokens.token.saga_worker:token_saga_parts"


@dataclass(frozen=True)
class SagaWorkerSettings(ServerSettings):
    """The Faust saga worker: its gRPC health server (ServerSettings), Kafka and its loops."""

    kafka_bootstrap: str = field(
        default="127.0.0.1:9092", metadata=doc("Kafka bootstrap servers (host:port,...).")
    )
    topic: str = field(
        default="leaky.purchase.v1",
        metadata=doc("The purchase topic every participant consumes and the outbox feeds."),
    )
    topic_partitions: int = field(
        default=3, metadata=doc("Partitions the purchase topic is created with (if missing).")
    )
    topic_replication: int = field(
        default=1, metadata=doc("Replication factor it is created with (1: a single broker).")
    )
    group: str = field(
        default="leaky-token-saga",
        metadata=doc("Faust app id = Kafka consumer group of the worker's agents."),
    )
    parts_factory: str = field(
        default=REAL_PARTS,
        metadata=doc(
            "module:callable returning the SagaParts (participants, outbox, recovery) to run;"
            " tests point it at their doubles."
        ),
    )
    retry_backoff_ms: int = field(
        default=100, metadata=doc("First wait before a failed handle is retried; doubles.")
    )
    retry_backoff_max_ms: int = field(
        default=5_000, metadata=doc("Longest wait between retries of one failing handle.")
    )
    stuck_after_ms: int = field(
        default=30_000,
        metadata=doc(
            "Health goes NOT_SERVING (Consul critical) when a handle, retries included, has"
            " not finished for this long, or the consumer is not running or assigned."
        ),
    )
    health_interval_ms: int = field(
        default=500, metadata=doc("How often the worker re-evaluates its health.")
    )
    session_timeout_ms: int = field(
        default=10_000,
        metadata=doc(
            "Kafka group session timeout: a worker that died (SIGKILL) holds its partitions"
            " this long before the group hands them to another (broker minimum 6000)."
        ),
    )
    commit_interval_ms: int = field(
        default=1_000, metadata=doc("How often handled offsets are committed to Kafka.")
    )
    recovery_interval_ms: int = field(
        default=5_000, metadata=doc("Time between two recover_stuck passes.")
    )
    recovery_batch: int = field(default=100, metadata=doc("Most sagas one recovery pass moves."))
    outbox_batch: int = field(default=200, metadata=doc("Most outbox records published at once."))
    outbox_poll_ms: int = field(
        default=200, metadata=doc("How long the outbox relay waits when nothing is pending.")
    )
    publish_timeout_ms: int = field(
        default=10_000, metadata=doc("An outbox batch Kafka has not acknowledged by then failed.")
    )

    def __post_init__(self) -> None:
        for name in (
            "topic_partitions",
            "topic_replication",
            "retry_backoff_ms",
            "retry_backoff_max_ms",
            "stuck_after_ms",
            "health_interval_ms",
            "session_timeout_ms",
            "commit_interval_ms",
            "recovery_interval_ms",
            "recovery_batch",
            "outbox_batch",
            "outbox_poll_ms",
            "publish_timeout_ms",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.retry_backoff_max_ms < self.retry_backoff_ms:
            raise SettingsError("retry_backoff_max_ms: must not be below retry_backoff_ms")
        for name in ("kafka_bootstrap", "topic", "group"):
            if not getattr(self, name).strip():
                raise SettingsError(f"{name}: must not be empty")
        module, _, attr = self.parts_factory.partition(":")
        if not module or not attr:
            raise SettingsError(
                f"parts_factory: expected module:callable, got {self.parts_factory!r}"
            )
