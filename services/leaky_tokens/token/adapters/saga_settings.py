"""Settings of the saga worker process (LEAKY_TOKEN_SAGA_*): Kafka, retries, health, parts.

Kafka, retries and health are every Faust worker's (runtime/faust_worker.py); these are the
saga's own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from leaky_tokens.runtime.faust_worker import FaustWorkerSettings
from leaky_tokens.runtime.settings import SettingsError, doc

# Where the saga's real participants, outbox and recovery come from (saga_worker.py).
REAL_PARTS = "leaky_tokens.token.saga_worker:token_saga_parts"


@dataclass(frozen=True)
class SagaWorkerSettings(FaustWorkerSettings):
    """The Faust saga worker: the shared worker settings, its topic, parts and loops."""

    group: str = field(
        default="leaky-token-saga",
        metadata=doc("Faust app id = Kafka consumer group of the worker's agents."),
    )
    topic: str = field(
        default="leaky.purchase.v1",
        metadata=doc("The purchase topic every participant consumes and the outbox feeds."),
    )
    parts_factory: str = field(
        default=REAL_PARTS,
        metadata=doc(
            "module:callable returning the SagaParts (participants, outbox, recovery) to run;"
            " tests point it at their doubles."
        ),
    )
    recovery_interval_ms: int = field(
        default=5_000, metadata=doc("Time between two recover_stuck passes.")
    )
    recovery_batch: int = field(default=100, metadata=doc("Most sagas one recovery pass moves."))
    outbox_batch: int = field(default=200, metadata=doc("Most outbox records published at once."))
    outbox_poll_ms: int = field(
        default=200, metadata=doc("How long the outbox relay waits when nothing is pending.")
    )

    POSITIVE: ClassVar[tuple[str, ...]] = (
        "recovery_interval_ms",
        "recovery_batch",
        "outbox_batch",
        "outbox_poll_ms",
    )
    NOT_EMPTY: ClassVar[tuple[str, ...]] = ("topic",)

    def __post_init__(self) -> None:
        super().__post_init__()
        module, _, attr = self.parts_factory.partition(":")
        if not module or not attr:
            raise SettingsError(
                f"parts_factory: expected module:callable, got {self.parts_factory!r}"
            )
