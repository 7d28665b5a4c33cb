"""Token domain values <-> leaky.token.v1 messages, and a denial's details and headers."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TypeAlias

from google.protobuf import duration_pb2, timestamp_pb2

from leaky.token.v1 import limits_pb2 as lpb
from leaky.token.v1 import token_pb2 as pb
from leaky_tokens.token.domain import quota as quota_math
from leaky_tokens.token.domain.decision import (
    BUCKET_LEVELS,
    Denied,
    Level,
    LevelStatus,
    QuotaSlot,
    Snapshot,
    bucket_status,
    quota_status,
)
from leaky_tokens.token.domain.metering import (
    Closed,
    Consumed,
    Held,
    LimitDeniedError,
    QuotaView,
    Scope,
)
from leaky_tokens.token.domain.reservation import Reservation, ReservationStatus
from leaky_tokens.token.domain.units import ceil_div
from leaky_tokens.token.domain.windows import Period

LevelCode: TypeAlias = lpb.LimitLevel.ValueType
_BUCKET: dict[Level, LevelCode] = {
    Level.USER_BUCKET: lpb.LIMIT_LEVEL_USER_BUCKET,
    Level.ORG_BUCKET: lpb.LIMIT_LEVEL_ORG_BUCKET,
}
_WINDOW: dict[Level, LevelCode] = {
    Level.USER_QUOTA: lpb.LIMIT_LEVEL_USER_QUOTA_WINDOW,
    Level.ORG_QUOTA: lpb.LIMIT_LEVEL_ORG_QUOTA_WINDOW,
}
_PURCHASED: dict[Level, LevelCode] = {
    Level.USER_QUOTA: lpb.LIMIT_LEVEL_USER_PURCHASED,
    Level.ORG_QUOTA: lpb.LIMIT_LEVEL_ORG_PURCHASED,
}
_NAMES: dict[LevelCode, str] = {
    lpb.LIMIT_LEVEL_USER_BUCKET: "user-bucket",
    lpb.LIMIT_LEVEL_ORG_BUCKET: "org-bucket",
    lpb.LIMIT_LEVEL_USER_QUOTA_WINDOW: "user-quota",
    lpb.LIMIT_LEVEL_ORG_QUOTA_WINDOW: "org-quota",
    lpb.LIMIT_LEVEL_USER_PURCHASED: "user-purchased",
    lpb.LIMIT_LEVEL_ORG_PURCHASED: "org-purchased",
}
_UNITS = {Period.DAILY: lpb.LIMIT_UNIT_DAY, Period.WEEKLY: lpb.LIMIT_UNIT_WEEK,
          Period.MONTHLY: lpb.LIMIT_UNIT_MONTH}  # fmt: skip
_STATES = {
    ReservationStatus.PENDING: pb.RESERVATION_STATE_OPEN,
    ReservationStatus.SETTLED: pb.RESERVATION_STATE_SETTLED,
    ReservationStatus.RELEASED: pb.RESERVATION_STATE_RELEASED,
}


def _ts(ms: int) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromMilliseconds(ms)
    return out


def duration(ms: int) -> duration_pb2.Duration:
    """A Duration of `ms` milliseconds."""
    out = duration_pb2.Duration()
    out.FromMilliseconds(ms)
    return out


def _status(scope: Scope, level: LevelCode, limit: int, remaining: int) -> lpb.LimitStatus:
    name = f"{scope.subject.provider}/{_NAMES[level]}"
    return lpb.LimitStatus(
        level=level, name=name, code=lpb.LIMIT_CODE_OK, limit=limit, remaining=max(0, remaining)
    )


def _bucket(scope: Scope, st: LevelStatus) -> lpb.LimitStatus:
    out = _status(scope, _BUCKET[st.level], st.limit, st.remaining)
    out.reset_after.FromMilliseconds(st.reset_after_ms)
    bl = scope.limits.buckets[st.level]
    out.window.FromMilliseconds(ceil_div(bl.capacity_units, bl.leak_per_ms))
    return out


def _window(scope: Scope, level: Level, limit: int, remaining: int) -> lpb.LimitStatus:
    out = _status(scope, _WINDOW[level], limit, remaining)
    ql = scope.limits.quotas[level]
    out.reset_after.FromMilliseconds(max(0, ql.window_end_ms - scope.now_ms))
    out.window.FromMilliseconds(ql.window_end_ms - ql.window_start_ms)
    out.unit = _UNITS.get(scope.policy.window.period, lpb.LIMIT_UNIT_UNSPECIFIED)
    return out


def statuses(
    scope: Scope, levels: Iterable[LevelStatus], snapshot: Snapshot | None
) -> list[lpb.LimitStatus]:
    """Every level as the contract reports it; with the states, a quota's window and purchased
    balance are two levels (a denial reports the pool as its window level)."""
    out: list[lpb.LimitStatus] = []
    for st in levels:
        if st.level in BUCKET_LEVELS:
            out.append(_bucket(scope, st))
            continue
        slot = snapshot.quotas.get(st.level) if snapshot is not None else None
        if slot is None:
            out.append(_window(scope, st.level, st.limit, st.remaining))
            continue
        left = quota_math.window_remaining(slot.limit, slot.state)
        out.append(_window(scope, st.level, st.limit, left))
        bal = slot.state.balance
        out.append(_status(scope, _PURCHASED[st.level], bal, bal))
    return out


def denial(error: LimitDeniedError) -> LimitDeniedError:
    """Attach the LimitDecision detail and the rate-limit headers to a denial."""
    denied: Denied = error.denied
    found = statuses(error.scope, denied.statuses, None)
    waits = {_WINDOW.get(x.level) or _BUCKET[x.level]: x.wait_ms for x in denied.limiting}
    for st in found:
        if st.level in waits:
            st.code = lpb.LIMIT_CODE_OVER_LIMIT
            if (wait := waits[st.level]) is not None:
                st.retry_after.CopyFrom(duration(wait))
    worst = _WINDOW.get(denied.level) or _BUCKET[denied.level]
    decision = lpb.LimitDecision(decision_id=error.decision_id, limits=found)
    decision.decided_at.CopyFrom(_ts(error.scope.now_ms))
    error.details = (decision,)
    error.headers = headers(found, worst)
    return error


def _seconds(value: duration_pb2.Duration) -> int:
    return math.ceil(value.ToMilliseconds() / 1000)


def headers(found: list[lpb.LimitStatus], level: LevelCode) -> dict[str, str]:
    """X-RateLimit-* of the limiting level; IETF RateLimit / RateLimit-Policy of every level
    that has a window (a purchased balance has none), the limiting level first."""
    first = next(s for s in found if s.level == level)
    ordered = [first, *(s for s in found if s is not first and s.HasField("window"))]
    return {
        "x-ratelimit-limit": str(first.limit),
        "x-ratelimit-remaining": str(first.remaining),
        "x-ratelimit-reset": str(_seconds(first.reset_after)),
        "ratelimit-policy": ", ".join(
            f'"{s.name}";q={s.limit};w={_seconds(s.window)}' for s in ordered
        ),
        "ratelimit": ", ".join(
            f'"{s.name}";r={s.remaining};t={_seconds(s.reset_after)}' for s in ordered
        ),
    }


def allowed_headers(found: list[lpb.LimitStatus]) -> dict[str, str]:
    """The rate-limit headers of an allowed answer: X-RateLimit-* of the windowed level with
    the least room left, RateLimit / RateLimit-Policy of every windowed level."""
    windowed = [s for s in found if s.HasField("window")]
    if not windowed:
        return {}
    tightest = min(windowed, key=lambda s: s.remaining)
    return headers(found, tightest.level)


def consume_response(done: Consumed) -> pb.ConsumeResponse:
    """An allowed consume: the user's bucket as the original reported it, plus every level."""
    scope, allowed = done.scope, done.allowed
    user = next(s for s in allowed.statuses if s.level is Level.USER_BUCKET)
    slot = allowed.snapshot.buckets[Level.USER_BUCKET]
    out = pb.ConsumeResponse(
        allowed=True,
        capacity=user.limit,
        used=ceil_div(slot.state.level, slot.limit.scale),
        remaining=user.remaining,
        wait_seconds=0,
        timestamp=_ts(scope.now_ms),
        decision_id=done.decision_id,
        limits=statuses(scope, allowed.statuses, allowed.snapshot),
        replayed=done.replayed,
    )
    if done.provider_response is not None:
        out.provider_response.update(dict(done.provider_response))  # type: ignore[arg-type]
    return out


def reservation(scope: Scope, held: Reservation, *, created: bool = False) -> pb.Reservation:
    """A reservation as the contract shows it."""
    state = _STATES[held.status]
    expired = held.status is ReservationStatus.RELEASED and held.expires_at_ms <= scope.now_ms
    out = pb.Reservation(
        reservation_id=held.id,
        user_id=scope.subject.user_id,
        org_id=scope.subject.org_id or "",
        provider=scope.subject.provider,
        reserved_tokens=held.estimate,
        state=pb.RESERVATION_STATE_EXPIRED if expired else state,
        expires_at=_ts(held.expires_at_ms),
        actual_tokens=held.actual or 0,
        decision_id=held.id,
    )
    if created:
        out.created_at.CopyFrom(_ts(scope.now_ms))
    return out


def reserve_response(done: Held) -> pb.ReserveResponse:
    """A granted reservation and every level after the hold."""
    r = done.reserved
    return pb.ReserveResponse(
        reservation=reservation(done.scope, r.reservation, created=True),
        limits=statuses(done.scope, r.statuses, r.snapshot),
        replayed=done.replayed,
    )


def _after(done: Closed) -> list[lpb.LimitStatus]:
    snap, now = done.settlement.snapshot, done.scope.now_ms
    found = [bucket_status(lv, s) for lv, s in snap.buckets.items()]
    found += [quota_status(lv, s, now) for lv, s in snap.quotas.items()]
    return statuses(done.scope, found, snap)


def settle_response(done: Closed) -> pb.SettleResponse:
    """A settled reservation, what was given back or charged, and every level after."""
    s = done.settlement
    return pb.SettleResponse(
        reservation=reservation(done.scope, s.reservation),
        refunded_tokens=s.refunded,
        charged_tokens=s.charged,
        limits=_after(done),
        decision_id=f"{s.reservation.id}:settle",
    )


def release_response(done: Closed) -> pb.ReleaseResponse:
    """A released reservation and every level after."""
    held = done.settlement.reservation
    return pb.ReleaseResponse(
        reservation=reservation(done.scope, held),
        released_tokens=held.estimate,
        limits=_after(done),
    )


def quota_message(view: QuotaView) -> pb.Quota:
    """One subject's quota: the window and the purchased balance apart, and their sums."""
    scope = view.scope
    level = Level.ORG_QUOTA if scope.subject.org_id else Level.USER_QUOTA
    slot: QuotaSlot | None = view.snapshot.quotas.get(level)
    out = pb.Quota(
        user_id="" if scope.subject.org_id else scope.subject.user_id,
        org_id=scope.subject.org_id or "",
        provider=scope.subject.provider,
        tier="" if scope.subject.org_id else scope.tier,
        window_unit=_UNITS.get(scope.policy.window.period, lpb.LIMIT_UNIT_UNSPECIFIED),
    )
    if slot is None:  # the plan has no quota for this provider: only buckets limit it
        return out
    left = quota_math.window_remaining(slot.limit, slot.state)
    bal = slot.state.balance
    out.window_allowance, out.window_used, out.window_remaining = (
        slot.limit.allowance, slot.state.used, left)  # fmt: skip
    out.purchased_balance = bal
    out.total_tokens, out.remaining_tokens = slot.limit.allowance + bal, left + bal
    out.window_start.CopyFrom(_ts(slot.limit.window_start_ms))
    out.reset_time.CopyFrom(_ts(slot.limit.window_end_ms))
    return out


def grant_response(view: QuotaView) -> pb.GrantTokensResponse:
    """The grant's id and the credited quota."""
    return pb.GrantTokensResponse(
        grant_id=view.grant_id, quota=quota_message(view), replayed=view.replayed
    )
