"""The store's usage events as `leaky.events.v1.EventEnvelope` protobufs (Kafka values)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from google.protobuf.timestamp_pb2 import Timestamp

from leaky.events.v1 import events_pb2 as ev
from leaky_tokens.token.adapters.event_limits import LEVELS as _LEVEL
from leaky_tokens.token.adapters.event_limits import limit_statuses, statuses_back
from leaky_tokens.token.domain.decision import Level, LevelStatus, Limiting
from leaky_tokens.token.domain.ports import EventKind, UsageEvent

SOURCE = "token"

# A quota level's debit is recorded against its window: the store's event does not split
# window from purchased balance (ADR 0024), consumers needing the split read the quota.
_LEVEL_BACK = {wire: level for level, wire in _LEVEL.items()}
_REASON = {
    "RATE_LIMITED": ev.DECISION_REASON_RATE_LIMITED,
    "QUOTA_EXHAUSTED": ev.DECISION_REASON_QUOTA_EXHAUSTED,
    "REQUEST_EXCEEDS_CAPACITY": ev.DECISION_REASON_REQUEST_EXCEEDS_CAPACITY,
    "STORE_UNAVAILABLE": ev.DECISION_REASON_STORE_UNAVAILABLE,
    "FAIL_OPEN": ev.DECISION_REASON_FAIL_OPEN,
    "LOCAL_EMERGENCY": ev.DECISION_REASON_LOCAL_EMERGENCY,
}
_REASON_BACK = {wire: name for name, wire in _REASON.items()}
EXPIRED = "expired"


class EventCodecError(ValueError):
    """An envelope that is not one of the token service's usage events."""


def envelope(event: UsageEvent, source: str = SOURCE) -> ev.EventEnvelope:
    """The envelope of one stored event: same id, time and tenant on every relay attempt."""
    out = ev.EventEnvelope(
        event_id=event.event_id,
        occurred_at=_timestamp(event.occurred_at_ms),
        partition_key=event.tenant,
        correlation_id=event.causation_id,
        source=source,
    )
    # The flow's first event (a decision, a reservation, a grant) has its own id as the
    # store's causation id; a refund, settlement or release follows the event with that id.
    if event.causation_id != event.event_id:
        out.causation_id = event.causation_id
    kind, org = event.kind, event.org_id or ""
    if kind in (EventKind.ALLOWED, EventKind.DENIED):
        allowed = kind is EventKind.ALLOWED
        out.token_usage_recorded.CopyFrom(
            ev.TokenUsageRecorded(
                decision_id=event.causation_id,
                tokens=event.tokens,
                allowed=allowed,
                reason=_reason(event),
                # Empty when denied (the contract): the refusing levels are not debits.
                debits=_debits(event, 1) if allowed else (),
                user_id=event.user_id,
                org_id=org,
                provider=event.provider,
                limits=limit_statuses(event),
            )
        )
    elif kind is EventKind.REFUNDED:
        out.tokens_refunded.CopyFrom(
            ev.TokensRefunded(
                decision_id=event.causation_id,
                tokens=event.tokens,
                reason=event.reason or "",
                debits=_debits(event, -1),
                user_id=event.user_id,
                org_id=org,
                provider=event.provider,
            )
        )
    elif kind in (EventKind.RESERVED, EventKind.RESERVE_DENIED):
        granted = kind is EventKind.RESERVED
        out.tokens_reserved.CopyFrom(
            ev.TokensReserved(
                # A denial holds nothing, so it has no reservation id (the contract); its
                # decision id is the one the client heard in the denial's LimitDecision.
                reservation_id=event.causation_id if granted else "",
                decision_id=event.event_id,
                tokens=event.tokens,
                allowed=granted,
                reason=_reason(event),
                debits=_debits(event, 1) if granted else (),
                user_id=event.user_id,
                org_id=org,
                provider=event.provider,
                limits=limit_statuses(event),
            )
        )
        if granted and event.expires_at_ms:
            out.tokens_reserved.expires_at.CopyFrom(_timestamp(event.expires_at_ms))
    elif kind is EventKind.SETTLED:
        net = event.tokens - event.estimate
        out.reservation_settled.CopyFrom(
            ev.ReservationSettled(
                reservation_id=event.causation_id,
                decision_id=event.event_id,
                reserved_tokens=event.estimate,
                actual_tokens=event.tokens,
                refunded_tokens=max(0, -net),
                charged_tokens=max(0, net),
                # Each level moved by the difference, less the excess it had no room for
                # (that part is overage: billed, not held against the limit).
                debits=[_debit(lv, net - event.overage.get(lv, 0)) for lv in event.levels],
                overage=[_debit(level, n) for level, n in sorted(event.overage.items())],
                user_id=event.user_id,
                org_id=org,
                provider=event.provider,
            )
        )
    elif kind is EventKind.RELEASED:
        out.reservation_released.CopyFrom(
            ev.ReservationReleased(
                reservation_id=event.causation_id,
                released_tokens=event.tokens,
                expired=event.reason == EXPIRED,
                debits=_debits(event, -1),
                user_id=event.user_id,
                org_id=org,
                provider=event.provider,
            )
        )
    elif kind is EventKind.CREDITED:
        out.tokens_granted.CopyFrom(
            ev.TokensGranted(
                grant_id=event.causation_id,
                tokens=event.tokens,
                user_id=event.user_id,
                org_id=org,
                provider=event.provider,
                granted_by=event.granted_by,
                reason=event.reason or "",
            )
        )
    elif kind is EventKind.REVERTED:
        out.grant_reverted.CopyFrom(
            ev.GrantReverted(
                grant_id=event.causation_id,
                tokens=event.tokens,
                user_id=event.user_id,
                org_id=org,
                provider=event.provider,
                reason=event.reason or "",
            )
        )
    else:  # pragma: no cover - EventKind is closed; a new kind must be mapped here first
        raise EventCodecError(f"no envelope for event kind {kind!r}")
    return out


def encode(event: UsageEvent, source: str = SOURCE) -> bytes:
    """The Kafka value: the envelope serialized deterministically (same event, same bytes)."""
    return envelope(event, source).SerializeToString(deterministic=True)


def decode(value: bytes) -> ev.EventEnvelope:
    """Parse a Kafka value; a value that is not an envelope with an id is refused."""
    parsed = ev.EventEnvelope()
    try:
        parsed.ParseFromString(value)
    except Exception as error:  # protobuf raises DecodeError, a bare Exception subclass
        raise EventCodecError(f"not an EventEnvelope: {error}") from error
    if not parsed.event_id:
        raise EventCodecError("EventEnvelope without event_id")
    return parsed


def usage_event(env: ev.EventEnvelope) -> UsageEvent:
    """The store's event back from its envelope (a consumer's view; the inverse of `envelope`).

    What the wire does not carry reads back empty: a denial's refusing levels and a
    settlement's levels; a grant's level reads back as the org's quota when an org was
    credited, else the user's.
    """
    case = env.WhichOneof("event")
    reason: str | None = None
    overage: Mapping[Level, int] = MappingProxyType({})
    estimate, expires_at_ms, granted_by = 0, 0, ""
    if case == "token_usage_recorded":
        body = env.token_usage_recorded
        kind = EventKind.ALLOWED if body.allowed else EventKind.DENIED
        reason = None if body.allowed else _REASON_BACK.get(body.reason)
        tokens = body.tokens
    elif case == "tokens_refunded":
        body_r = env.tokens_refunded
        kind, tokens, reason = EventKind.REFUNDED, body_r.tokens, body_r.reason or None
    elif case == "tokens_reserved":
        body_v = env.tokens_reserved
        kind = EventKind.RESERVED if body_v.allowed else EventKind.RESERVE_DENIED
        reason = None if body_v.allowed else _REASON_BACK.get(body_v.reason)
        tokens = body_v.tokens
        if body_v.HasField("expires_at"):
            expires_at_ms = body_v.expires_at.ToMilliseconds()
    elif case == "reservation_settled":
        body_s = env.reservation_settled
        kind, tokens, estimate = EventKind.SETTLED, body_s.actual_tokens, body_s.reserved_tokens
        overage = MappingProxyType({_LEVEL_BACK[d.level]: d.tokens for d in body_s.overage})
    elif case == "reservation_released":
        body_x = env.reservation_released
        kind, tokens = EventKind.RELEASED, body_x.released_tokens
        reason = EXPIRED if body_x.expired else None
    elif case == "tokens_granted":
        body_g = env.tokens_granted
        kind, tokens, reason = EventKind.CREDITED, body_g.tokens, body_g.reason or None
        granted_by = body_g.granted_by
    elif case == "grant_reverted":
        body_gr = env.grant_reverted
        kind, tokens, reason = EventKind.REVERTED, body_gr.tokens, body_gr.reason or None
    else:
        raise EventCodecError(f"not a token usage event: {case!r}")
    body_any = getattr(env, case)
    levels: tuple[Level, ...]
    statuses: tuple[LevelStatus, ...] = ()
    limiting: tuple[Limiting, ...] = ()
    if case in ("tokens_granted", "grant_reverted"):
        levels = (Level.ORG_QUOTA if body_any.org_id else Level.USER_QUOTA,)
    elif kind in (EventKind.DENIED, EventKind.RESERVE_DENIED):
        statuses, limiting = statuses_back(body_any.limits)
        levels = tuple(x.level for x in limiting)
    else:
        levels = tuple(_LEVEL_BACK[d.level] for d in body_any.debits)
    return UsageEvent(
        event_id=env.event_id,
        kind=kind,
        occurred_at_ms=env.occurred_at.seconds * 1000 + env.occurred_at.nanos // 1_000_000,
        tenant=env.partition_key,
        user_id=body_any.user_id,
        org_id=body_any.org_id or None,
        provider=body_any.provider,
        tokens=tokens,
        causation_id=env.correlation_id,
        levels=levels,
        reason=reason,
        overage=overage,
        statuses=statuses,
        limiting=limiting,
        estimate=estimate,
        expires_at_ms=expires_at_ms,
        granted_by=granted_by,
    )


def _timestamp(ms: int) -> Timestamp:
    return Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def _reason(event: UsageEvent) -> ev.DecisionReason.ValueType:
    if event.kind in (EventKind.ALLOWED, EventKind.RESERVED):
        return ev.DECISION_REASON_ALLOWED
    return _REASON.get(event.reason or "", ev.DECISION_REASON_UNSPECIFIED)


def _debit(level: Level, tokens: int) -> ev.LevelDebit:
    return ev.LevelDebit(level=_LEVEL[level], tokens=tokens)


def _debits(event: UsageEvent, sign: int) -> list[ev.LevelDebit]:
    # Every level of one request moves by the same token count (ADR 0018), so the store's
    # event keeps the levels alone.
    return [_debit(level, sign * event.tokens) for level in event.levels]
