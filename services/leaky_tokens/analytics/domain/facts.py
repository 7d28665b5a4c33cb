"""What the projection keeps from the token service's events."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FactKind(enum.Enum):
    """The kind of usage fact; decisions count as events, give-backs only as refunded tokens."""

    CONSUME = "consume"  # TokenUsageRecorded: a consume decision (allowed or denied)
    RESERVE = "reserve"  # TokensReserved: a reserve decision (allowed or denied)
    REFUND = "refund"  # TokensRefunded: a consume's tokens given back after a provider failure
    SETTLE = "settle"  # ReservationSettled: the unused part of a reservation given back
    RELEASE = "release"  # ReservationReleased: a whole reservation given back

    @property
    def is_decision(self) -> bool:
        """Decisions are the events reports count; the others only add refunded tokens."""
        return self in (FactKind.CONSUME, FactKind.RESERVE)


@dataclass(frozen=True, slots=True)
class UsageFact:
    """One usage event as analytics sees it.

    `tokens` is what was requested for a decision and what was given back otherwise.
    `occurred_at_ms` is the event's own time (epoch ms), never the time it was projected.
    `org_id` is "" when no organization was charged. `allowed` is False for give-backs.
    """

    event_id: str
    occurred_at_ms: int
    kind: FactKind
    provider: str
    user_id: str
    org_id: str
    tokens: int
    allowed: bool


class PurchaseState(enum.Enum):
    """A purchase's state as the purchase events tell it (terminal states are final)."""

    STARTED = "started"
    PAYMENT_RESERVED = "payment_reserved"
    TOKENS_ALLOCATED = "tokens_allocated"
    PAYMENT_CAPTURED = "payment_captured"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        """COMPLETED and FAILED never change again."""
        return self in (PurchaseState.COMPLETED, PurchaseState.FAILED)


@dataclass(frozen=True, slots=True)
class PurchaseFact:
    """One purchase saga step: the saga's state after the event with id `event_id`."""

    event_id: str
    occurred_at_ms: int
    saga_id: str
    user_id: str
    org_id: str
    provider: str
    tokens: int
    state: PurchaseState
    reason: str = ""


Fact = UsageFact | PurchaseFact


@dataclass(frozen=True, slots=True)
class SourcedFact:
    """A fact with where it was read: (topic, partition, offset) orders one partition's facts.

    Kafka gives the partition and offset; the embedded event log has one partition (0) and its
    sequence number as offset. Offsets only grow within one (topic, partition).
    """

    topic: str
    partition: int
    offset: int
    fact: Fact
