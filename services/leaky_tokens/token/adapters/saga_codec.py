"""The saga's events on the wire: SagaEvent -> EventEnvelope, and an envelope's saga and type."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from leaky.events.v1 import events_pb2 as ev
from leaky_tokens.token.domain.saga import EventType, SagaEvent

SOURCE = "token-saga"
_BODIES: dict[EventType, type[Message]] = {
    EventType.PURCHASE_REQUESTED: ev.PurchaseRequested,
    EventType.PAYMENT_RESERVED: ev.PaymentReserved,
    EventType.PAYMENT_FAILED: ev.PaymentFailed,
    EventType.TOKENS_ALLOCATED: ev.TokensAllocated,
    EventType.ALLOCATION_FAILED: ev.AllocationFailed,
    EventType.PAYMENT_CAPTURED: ev.PaymentCaptured,
    EventType.PAYMENT_CAPTURE_FAILED: ev.PaymentCaptureFailed,
    EventType.ALLOCATION_REVERTED: ev.AllocationReverted,
    EventType.PAYMENT_RELEASED: ev.PaymentReleased,
    EventType.PURCHASE_COMPLETED: ev.PurchaseCompleted,
    EventType.PURCHASE_FAILED: ev.PurchaseFailed,
}
_CASES = {t.value for t in EventType}


def envelope(event: SagaEvent) -> ev.EventEnvelope:
    """The envelope of one saga event: keyed by the tenant, correlated by the saga id."""
    p = event.purchase
    stamp = Timestamp()
    stamp.FromDatetime(event.occurred_at)
    out = ev.EventEnvelope(
        event_id=event.event_id,
        occurred_at=stamp,
        partition_key=p.org_id or p.user_id,
        causation_id=event.causation_id,
        correlation_id=p.saga_id,
        source=SOURCE,
    )
    body = _BODIES[event.type]()
    fields: dict[str, str | int] = {
        "saga_id": p.saga_id,
        "user_id": p.user_id,
        "org_id": p.org_id or "",
        "provider": p.provider,
        "tokens": event.tokens if event.type is EventType.ALLOCATION_REVERTED else p.tokens,
    }
    names = body.DESCRIPTOR.fields_by_name
    if "payment_id" in names:
        fields["payment_id"] = p.payment_id
    if "reason" in names:
        fields["reason"] = event.reason
    for name, value in fields.items():
        setattr(body, name, value)
    getattr(out, event.type.value).CopyFrom(body)
    return out


def encode(event: SagaEvent) -> bytes:
    """The outbox's bytes of one event (deterministic: the same event, the same bytes)."""
    return envelope(event).SerializeToString(deterministic=True)


@dataclass(frozen=True, slots=True)
class SagaMessage:
    """What a participant needs of an envelope: which saga, which event, which id."""

    type: EventType
    saga_id: str
    event_id: str


def saga_message(env: ev.EventEnvelope) -> SagaMessage | None:
    """The saga event an envelope carries, or None for any other event (skipped)."""
    case = env.WhichOneof("event")
    if case is None or case not in _CASES:
        return None
    return SagaMessage(EventType(case), getattr(env, case).saga_id, env.event_id)
