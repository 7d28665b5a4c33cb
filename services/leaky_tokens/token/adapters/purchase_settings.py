"""Settings of the purchase saga: its database, topic, runner, recovery and the payment stub."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from leaky_tokens.runtime.settings import SettingsError, doc
from leaky_tokens.token.adapters.settings import TokenStoreSettings
from leaky_tokens.token.adapters.stub_payment import PaymentStubConfig


class SagaRunner(StrEnum):
    """Which process runs the saga's participants, outbox relay and recovery."""

    EMBEDDED = "embedded"  # the token service itself, over the in-process bus
    EXTERNAL = "external"  # the Faust worker over Kafka; the token service only records


@dataclass(frozen=True)
class PurchaseSagaSettings(TokenStoreSettings):
    """The saga's settings (LEAKY_TOKEN_<FIELD>, shared by the token service and the worker).

    It includes the decision store's settings: allocation credits the token service's store.
    """

    database_url: str = field(
        default="",
        metadata=doc(
            "SQLAlchemy URL of the token database (purchase sagas, their outbox): "
            "sqlite+aiosqlite:///... or postgresql+psycopg://...; empty = SQLite file "
            "token.db in LEAKY_DATA_DIR."
        ),
    )
    auto_migrate: bool = field(
        default=True, metadata=doc("Apply the token database's migrations at start.")
    )
    policy_file: str = field(
        default="",
        metadata=doc("Policy YAML (providers, tiers, orgs, windows); empty = the shipped one."),
    )
    saga_runner: str = field(
        default="embedded",
        metadata=doc(
            "Where the purchase saga runs: embedded (this token service, in-process bus) or "
            "external (the Faust worker over Kafka; the service only records purchases)."
        ),
    )
    saga_topic: str = field(
        default="leaky.purchase.v1",
        metadata=doc("Topic of every purchase saga event (Kafka, or the in-process bus)."),
    )
    saga_timeout_seconds: float = field(
        default=300.0,
        metadata=doc(
            "A saga unchanged this long is recovered: compensated (payment released, FAILED "
            "'timed out') before allocation, completed after it."
        ),
    )
    saga_recovery_interval_seconds: float = field(
        default=30.0, metadata=doc("How often the recovery looks for stuck sagas.")
    )
    saga_recovery_batch: int = field(
        default=100, metadata=doc("Most stuck sagas one recovery pass moves on.")
    )
    saga_payment_latency_ms: int = field(
        default=20, metadata=doc("Payment stub: how long each payment call takes.")
    )
    saga_payment_failure_rate: float = field(
        default=0.0,
        metadata=doc("Payment stub: share of payment reservations declined (0.0 to 1.0)."),
    )
    saga_payment_decline_reason: str = field(
        default="card declined", metadata=doc("Payment stub: the reason a decline gives.")
    )
    saga_payment_decline_above_tokens: int = field(
        default=0,
        metadata=doc("Payment stub: decline purchases of more tokens than this; 0 = never."),
    )
    saga_payment_capture_failure_rate: float = field(
        default=0.0,
        metadata=doc(
            "Payment stub: share of captures (after allocation) that fail, so the "
            "allocation is reverted and the payment released (0.0 to 1.0)."
        ),
    )
    saga_payment_seed: str = field(
        default="",
        metadata=doc(
            "Payment stub: mixed into each saga's draw (a saga's outcome is a hash of the "
            "seed and its id: the same on every retry and in every process)."
        ),
    )

    def __post_init__(self) -> None:
        TokenStoreSettings.__post_init__(self)
        if self.saga_runner not in {r.value for r in SagaRunner}:
            raise SettingsError(
                f"saga_runner: expected embedded or external, got {self.saga_runner!r}"
            )
        for name in ("saga_payment_failure_rate", "saga_payment_capture_failure_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SettingsError(f"{name}: must be between 0.0 and 1.0")
        for name in ("saga_timeout_seconds", "saga_recovery_interval_seconds"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name}: must be positive")
        if self.saga_recovery_batch < 1:
            raise SettingsError("saga_recovery_batch: must be positive")
        if self.saga_payment_latency_ms < 0 or self.saga_payment_decline_above_tokens < 0:
            raise SettingsError("saga_payment_latency_ms and _decline_above_tokens: not negative")
        if not self.saga_topic:
            raise SettingsError("saga_topic: must not be empty")

    @property
    def runner(self) -> SagaRunner:
        """`saga_runner` as its enum."""
        return SagaRunner(self.saga_runner)

    def payment_stub(self) -> PaymentStubConfig:
        """The payment stub's configuration."""
        return PaymentStubConfig(
            latency_ms=self.saga_payment_latency_ms,
            failure_rate=self.saga_payment_failure_rate,
            decline_reason=self.saga_payment_decline_reason,
            decline_above_tokens=self.saga_payment_decline_above_tokens,
            capture_failure_rate=self.saga_payment_capture_failure_rate,
            seed=self.saga_payment_seed,
        )
