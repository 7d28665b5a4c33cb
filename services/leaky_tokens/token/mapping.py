"""Token domain values <-> leaky.token.v1 messages, and a denial's details and headers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple, TypeAlias

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

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
LimitUnit: TypeAlias = lpb.LimitUnit.ValueType
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


def _set(field: duration_pb2.Duration, ms: int) -> None:
    """`field.FromMilliseconds(ms)` without its Python-level normalization when ms >= 0."""
    if ms >= 0:
        field.seconds, field.nanos = divmod(ms, 1000)
        field.nanos *= 1_000_000
    else:
        field.FromMilliseconds(ms)


class Row(NamedTuple):
    """One level as the contract reports it, in domain values: what a LimitStatus and the
    rate-limit headers are both made of (the headers are not read back from the messages)."""

    level: LevelCode
    name: str
    limit: int
    remaining: int
    reset_after_ms: int | None  # None: a purchased balance (no reset, no window)
    window_ms: int | None
    unit: LimitUnit


def _bucket(scope: Scope, st: LevelStatus) -> Row:
    code = _BUCKET[st.level]
    bl = scope.limits.buckets[st.level]
    window = ceil_div(bl.capacity_units, bl.leak_per_ms)
    return Row(code, _name(scope, code), st.limit, max(0, st.remaining), st.reset_after_ms,
               window, lpb.LIMIT_UNIT_UNSPECIFIED)  # fmt: skip


def _window(scope: Scope, level: Level, limit: int, remaining: int) -> Row:
    code = _WINDOW[level]
    ql = scope.limits.quotas[level]
    return Row(
        code, _name(scope, code), limit, max(0, remaining),
        max(0, ql.window_end_ms - scope.now_ms), ql.window_end_ms - ql.window_start_ms,
        _UNITS.get(scope.policy.window.period, lpb.LIMIT_UNIT_UNSPECIFIED),
    )  # fmt: skip


def _name(scope: Scope, code: LevelCode) -> str:
    return f"{scope.subject.provider}/{_NAMES[code]}"


def rows(scope: Scope, levels: Iterable[LevelStatus], snapshot: Snapshot | None) -> list[Row]:
    """Every level as the contract reports it; with the states, a quota's window and purchased
    balance are two levels (a denial reports the pool as its window level)."""
    out: list[Row] = []
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
        code = _PURCHASED[st.level]
        out.append(Row(code, _name(scope, code), bal, max(0, bal), None, None,
                       lpb.LIMIT_UNIT_UNSPECIFIED))  # fmt: skip
    return out


def fill(target: RepeatedCompositeFieldContainer[lpb.LimitStatus], found: list[Row]) -> None:
    """Append one LimitStatus per row to a repeated field, built in place (no copies)."""
    for r in found:
        st = target.add(level=r.level, name=r.name, code=lpb.LIMIT_CODE_OK, limit=r.limit,
                        remaining=r.remaining)  # fmt: skip
        if r.reset_after_ms is not None:
            _set(st.reset_after, r.reset_after_ms)
        if r.window_ms is not None:
            _set(st.window, r.window_ms)
            if r.unit:
                st.unit = r.unit


def statuses(
    scope: Scope, levels: Iterable[LevelStatus], snapshot: Snapshot | None
) -> list[lpb.LimitStatus]:
    """`rows` as LimitStatus messages."""
    out = lpb.LimitDecision()
    fill(out.limits, rows(scope, levels, snapshot))
    return list(out.limits)


def denial(error: LimitDeniedError) -> LimitDeniedError:
    """Attach the LimitDecision detail and the rate-limit headers to a denial."""
    denied: Denied = error.denied
    found = rows(error.scope, denied.statuses, None)
    waits = {_WINDOW.get(x.level) or _BUCKET[x.level]: x.wait_ms for x in denied.limiting}
    decision = lpb.LimitDecision(decision_id=error.decision_id)
    fill(decision.limits, found)
    for st in decision.limits:
        if st.level in waits:
            st.code = lpb.LIMIT_CODE_OVER_LIMIT
            if (wait := waits[st.level]) is not None:
                st.retry_after.CopyFrom(duration(wait))
    worst = _WINDOW.get(denied.level) or _BUCKET[denied.level]
    decision.decided_at.CopyFrom(_ts(error.scope.now_ms))
    error.details = (decision,)
    error.headers = headers(found, worst)
    return error


def _seconds(ms: int | None) -> int:
    """Whole seconds, rounded up (ceil(ms / 1000) in integers: exact at any size)."""
    return -(-(ms or 0) // 1000)


def headers(found: list[Row], level: LevelCode) -> dict[str, str]:
    """X-RateLimit-* of the limiting level; IETF RateLimit / RateLimit-Policy of every level
    that has a window (a purchased balance has none), the limiting level first."""
    first = next(r for r in found if r.level == level)
    ordered = [first, *(r for r in found if r is not first and r.window_ms is not None)]
    return {
        "x-ratelimit-limit": str(first.limit),
        "x-ratelimit-remaining": str(first.remaining),
        "x-ratelimit-reset": str(_seconds(first.reset_after_ms)),
        "ratelimit-policy": ", ".join(
            f'"{r.name}";q={r.limit};w={_seconds(r.window_ms)}' for r in ordered
        ),
        "ratelimit": ", ".join(
            f'"{r.name}";r={r.remaining};t={_seconds(r.reset_after_ms)}' for r in ordered
        ),
    }


def allowed_headers(found: list[Row]) -> dict[str, str]:
    """The rate-limit headers of an allowed answer: X-RateLimit-* of the windowed level with
    the least room left, RateLimit / RateLimit-Policy of every windowed level."""
    windowed = [r for r in found if r.window_ms is not None]
    if not windowed:
        return {}
    tightest = min(windowed, key=lambda r: r.remaining)
    return headers(found, tightest.level)


def consume_response(done: Consumed) -> tuple[pb.ConsumeResponse, dict[str, str]]:
    """An allowed consume (the user's bucket as the original reported it, plus every level)
    and its rate-limit headers, both from the same rows."""
    scope, allowed = done.scope, done.allowed
    user = next(s for s in allowed.statuses if s.level is Level.USER_BUCKET)
    slot = allowed.snapshot.buckets[Level.USER_BUCKET]
    out = pb.ConsumeResponse(
        allowed=True,
        capacity=user.limit,
        used=ceil_div(slot.state.level, slot.limit.scale),
        remaining=user.remaining,
        wait_seconds=0,
        decision_id=done.decision_id,
        replayed=done.replayed,
    )
    out.timestamp.FromMilliseconds(scope.now_ms)
    found = rows(scope, allowed.statuses, allowed.snapshot)
    fill(out.limits, found)
    if done.provider_response is not None:
        struct(out.provider_response, done.provider_response)
    return out, allowed_headers(found)


def struct(target: struct_pb2.Struct, values: Mapping[str, object]) -> None:
    """`target.update(values)`, the common JSON types set directly (Struct.update's generic
    per-value dispatch cost about as much as the rest of the mapping)."""
    fields = target.fields
    for key, value in values.items():
        kind = type(value)
        if kind is str:
            fields[key].string_value = value  # type: ignore[assignment]
        elif kind is dict:
            inner = fields[key].struct_value
            inner.Clear()
            struct(inner, value)  # type: ignore[arg-type]
        else:  # bool before numbers, None, lists, anything else: protobuf's own rules
            target.update({key: value})  # type: ignore[dict-item]


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


def reserve_response(done: Held) -> tuple[pb.ReserveResponse, dict[str, str]]:
    """A granted reservation and every level after the hold, and its rate-limit headers."""
    r = done.reserved
    out = pb.ReserveResponse(
        reservation=reservation(done.scope, r.reservation, created=True),
        replayed=done.replayed,
    )
    found = rows(done.scope, r.statuses, r.snapshot)
    fill(out.limits, found)
    return out, allowed_headers(found)


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
