"""EventEnvelope (leaky.events.v1) -> the analytics facts; malformed events are poison."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky_tokens.analytics.domain.facts import (
    Fact,
    FactKind,
    PurchaseFact,
    PurchaseState,
    UsageFact,
)

# Purchase events -> the saga state they leave it in.
PURCHASE_STATES = {
    "purchase_requested": PurchaseState.STARTED,
    "payment_reserved": PurchaseState.PAYMENT_RESERVED,
    "tokens_allocated": PurchaseState.TOKENS_ALLOCATED,
    "payment_captured": PurchaseState.PAYMENT_CAPTURED,
    "payment_failed": PurchaseState.COMPENSATING,
    "allocation_failed": PurchaseState.COMPENSATING,
    "payment_capture_failed": PurchaseState.COMPENSATING,
    "allocation_reverted": PurchaseState.COMPENSATING,
    "payment_released": PurchaseState.COMPENSATING,
    "purchase_completed": PurchaseState.COMPLETED,
    "purchase_failed": PurchaseState.FAILED,
}
# Events analytics has no use for (grants are ADMIN credits, not usage or purchases).
IGNORED = frozenset({"tokens_granted", "grant_reverted"})
# 9999-12-31T23:59:59Z: the last second a Timestamp may hold. A later occurred_at parses (the
# wire does not check it) but could never be sent back: one such row would make every Usage
# of its provider fail.
LAST_SECOND = 253_402_300_799
# The most tokens one event may carry: the token service refuses more per request (its
# SAFE_LIMIT). Far larger counts would overflow the stores' 64-bit sums (SQLite turns them
# into floats that no response can carry; Cassandra refuses the write, so the projection
# would retry that batch for ever instead of dead-lettering it).
MAX_EVENT_TOKENS = 2**53


class PoisonEventError(ValueError):
    """The message cannot be projected, ever; it goes to the dead-letter topic with `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode(value: bytes) -> EventEnvelope:
    """Parse a Kafka message value; PoisonEventError if it is not an EventEnvelope."""
    envelope = EventEnvelope()
    try:
        envelope.ParseFromString(value)
    except DecodeError as error:
        raise PoisonEventError(f"not an EventEnvelope: {error}") from None
    return envelope


def fact_of(envelope: EventEnvelope) -> Fact | None:
    """The fact an envelope carries; None for events analytics ignores (or does not know:
    a newer producer's event type is skipped, as the envelope's contract says).

    Raises PoisonEventError when a field the projection needs is missing or invalid.
    """
    case = envelope.WhichOneof("event")
    if case is None or case in IGNORED:
        return None
    if not envelope.event_id:
        raise PoisonEventError("event_id is empty")
    if not envelope.HasField("occurred_at"):
        raise PoisonEventError("occurred_at is missing")
    when = envelope.occurred_at
    if not 0 <= when.nanos <= 999_999_999:
        raise PoisonEventError("occurred_at has nanos outside 0-999999999")
    if when.seconds > LAST_SECOND:
        raise PoisonEventError("occurred_at is after 9999-12-31")
    at = when.seconds * 1000 + when.nanos // 1_000_000
    if at <= 0:
        raise PoisonEventError("occurred_at is not after 1970")
    body = getattr(envelope, case)
    if case in PURCHASE_STATES:
        _require(body.saga_id, "saga_id")
        _require(body.user_id, "user_id")
        _require(body.provider, "provider")
        _require_tokens(case, body.tokens)
        return PurchaseFact(
            event_id=envelope.event_id,
            occurred_at_ms=at,
            saga_id=body.saga_id,
            user_id=body.user_id,
            org_id=body.org_id,
            provider=body.provider,
            tokens=body.tokens,
            state=PURCHASE_STATES[case],
            reason=getattr(body, "reason", ""),
        )
    kind, tokens, allowed = _usage(case, body)
    if kind is None:
        return None
    _require(body.user_id, "user_id")
    _require(body.provider, "provider")
    _require_tokens(case, tokens)
    return UsageFact(
        event_id=envelope.event_id,
        occurred_at_ms=at,
        kind=kind,
        provider=body.provider,
        user_id=body.user_id,
        org_id=body.org_id,
        tokens=tokens,
        allowed=allowed,
    )


def _usage(case: str, body: object) -> tuple[FactKind | None, int, bool]:
    if case == "token_usage_recorded":
        return FactKind.CONSUME, body.tokens, body.allowed  # type: ignore[attr-defined]
    if case == "tokens_reserved":
        return FactKind.RESERVE, body.tokens, body.allowed  # type: ignore[attr-defined]
    if case == "tokens_refunded":
        return FactKind.REFUND, body.tokens, False  # type: ignore[attr-defined]
    if case == "reservation_settled":
        return FactKind.SETTLE, body.refunded_tokens, False  # type: ignore[attr-defined]
    if case == "reservation_released":
        return FactKind.RELEASE, body.released_tokens, False  # type: ignore[attr-defined]
    return None, 0, False


def _require(value: str, name: str) -> None:
    if not value:
        raise PoisonEventError(f"{name} is empty")


def _require_tokens(case: str, tokens: int) -> None:
    if tokens < 0:
        raise PoisonEventError(f"{case}: negative tokens")
    if tokens > MAX_EVENT_TOKENS:
        raise PoisonEventError(f"{case}: more than {MAX_EVENT_TOKENS} tokens")
