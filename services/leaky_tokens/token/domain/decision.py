"""One all-or-nothing decision over every applicable level: buckets, quota windows, balances."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from types import MappingProxyType

from leaky_tokens.token.domain import bucket, quota
from leaky_tokens.token.domain.bucket import BucketLimit, BucketState
from leaky_tokens.token.domain.quota import QuotaDebit, QuotaLimit, QuotaState
from leaky_tokens.token.domain.units import SAFE_LIMIT


class Level(StrEnum):
    """A level one consume is checked against; the order here is the evaluation order."""

    USER_BUCKET = "user_bucket"
    ORG_BUCKET = "org_bucket"
    USER_QUOTA = "user_quota"
    ORG_QUOTA = "org_quota"


BUCKET_LEVELS = (Level.USER_BUCKET, Level.ORG_BUCKET)
QUOTA_LEVELS = (Level.USER_QUOTA, Level.ORG_QUOTA)


class Reason(StrEnum):
    """Why a level refuses; the order here is the severity order (most severe first)."""

    REQUEST_EXCEEDS_CAPACITY = "REQUEST_EXCEEDS_CAPACITY"  # no wait helps
    QUOTA_EXHAUSTED = "QUOTA_EXHAUSTED"
    RATE_LIMITED = "RATE_LIMITED"


_SEVERITY = {reason: rank for rank, reason in enumerate(Reason)}


@dataclass(frozen=True, slots=True)
class BucketSlot:
    """One bucket level: its limit under the current policy and its stored state."""

    limit: BucketLimit
    state: BucketState


@dataclass(frozen=True, slots=True)
class QuotaSlot:
    """One quota level: its limit (allowance, current window) and its stored state."""

    limit: QuotaLimit
    state: QuotaState


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state of every level that applies to one request, as the store read it."""

    buckets: Mapping[Level, BucketSlot] = field(default_factory=dict)
    quotas: Mapping[Level, QuotaSlot] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not set(self.buckets) <= set(BUCKET_LEVELS):
            raise ValueError(f"not bucket levels: {set(self.buckets) - set(BUCKET_LEVELS)}")
        if not set(self.quotas) <= set(QUOTA_LEVELS):
            raise ValueError(f"not quota levels: {set(self.quotas) - set(QUOTA_LEVELS)}")


@dataclass(frozen=True, slots=True)
class Debit:
    """What one allowed request took from each level (bucket units, quota split by source)."""

    tokens: int
    buckets: Mapping[Level, int] = field(default_factory=dict)
    quotas: Mapping[Level, QuotaDebit] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LevelStatus:
    """One level after the decision: limit, what it still admits, and when it is fully reset.

    For a bucket: capacity, whole tokens that fit now, time until empty. For a quota: the
    window allowance, window remaining plus purchased balance, time until the window ends
    (`quota_status` keeps the window and the balance apart).
    """

    level: Level
    limit: int
    remaining: int
    reset_after_ms: int

    @property
    def reset_after(self) -> timedelta:
        """`reset_after_ms` as a duration."""
        return timedelta(milliseconds=self.reset_after_ms)


@dataclass(frozen=True, slots=True)
class Limiting:
    """A level that refused, why, and its own wait (None: no wait helps)."""

    level: Level
    reason: Reason
    wait_ms: int | None


@dataclass(frozen=True, slots=True)
class Allowed:
    """Every level admitted the request: the new states, the debit and the statuses."""

    snapshot: Snapshot
    debit: Debit
    statuses: tuple[LevelStatus, ...]


@dataclass(frozen=True, slots=True)
class Denied:
    """At least one level refused; nothing was changed.

    `level` and `reason` name the most severe refusal (capacity, then quota, then rate; ties in
    level order); `retry_after_ms` is the longest wait among the refusing levels, or None when
    one of them can never admit the request. `limiting` lists every refusing level.
    """

    level: Level
    reason: Reason
    retry_after_ms: int | None
    limiting: tuple[Limiting, ...]
    statuses: tuple[LevelStatus, ...]

    @property
    def retry_after(self) -> timedelta | None:
        """`retry_after_ms` as a duration (None: retrying cannot help)."""
        return None if self.retry_after_ms is None else timedelta(milliseconds=self.retry_after_ms)


def bucket_status(level: Level, slot: BucketSlot) -> LevelStatus:
    """The status of a bucket whose state is leaked to now."""
    return LevelStatus(
        level,
        slot.limit.capacity,
        bucket.remaining_hits(slot.limit, slot.state),
        bucket.reset_after_ms(slot.limit, slot.state),
    )


def quota_status(level: Level, slot: QuotaSlot, now_ms: int) -> LevelStatus:
    """The status of a quota whose window is rolled to now."""
    remaining = quota.window_remaining(slot.limit, slot.state) + slot.state.balance
    reset = max(0, slot.limit.window_end_ms - now_ms)
    return LevelStatus(level, slot.limit.allowance, remaining, reset)


def _statuses(snapshot: Snapshot, now_ms: int) -> tuple[LevelStatus, ...]:
    found = [bucket_status(lv, s) for lv, s in snapshot.buckets.items()]
    found += [quota_status(lv, s, now_ms) for lv, s in snapshot.quotas.items()]
    return tuple(sorted(found, key=lambda s: list(Level).index(s.level)))


def decide(snapshot: Snapshot, tokens: int, now_ms: int) -> Allowed | Denied:
    """Check `tokens` against every level; debit all of them or none."""
    if not 0 <= tokens < SAFE_LIMIT:
        raise ValueError(f"tokens out of range: {tokens} (see units.token_count)")
    limiting: list[Limiting] = []
    seen_buckets: dict[Level, BucketSlot] = {}
    seen_quotas: dict[Level, QuotaSlot] = {}
    after_buckets: dict[Level, BucketSlot] = {}
    after_quotas: dict[Level, QuotaSlot] = {}
    bucket_debits: dict[Level, int] = {}
    quota_debits: dict[Level, QuotaDebit] = {}
    for lv, slot in snapshot.buckets.items():
        got = bucket.check(slot.limit, slot.state, tokens, now_ms)
        seen_buckets[lv] = BucketSlot(slot.limit, got.state)
        if got.after is None:
            never = got.wait_ms is None
            reason = Reason.REQUEST_EXCEEDS_CAPACITY if never else Reason.RATE_LIMITED
            limiting.append(Limiting(lv, reason, got.wait_ms))
        else:
            after_buckets[lv] = BucketSlot(slot.limit, got.after)
            bucket_debits[lv] = tokens * slot.limit.scale
    for lv, qslot in snapshot.quotas.items():
        qgot = quota.check(qslot.limit, qslot.state, tokens, now_ms)
        seen_quotas[lv] = QuotaSlot(qslot.limit, qgot.state)
        if qgot.after is None or qgot.debit is None:
            limiting.append(Limiting(lv, Reason.QUOTA_EXHAUSTED, qgot.wait_ms))
        else:
            after_quotas[lv] = QuotaSlot(qslot.limit, qgot.after)
            quota_debits[lv] = qgot.debit
    if limiting:
        return _denied(limiting, Snapshot(seen_buckets, seen_quotas), now_ms)
    new = Snapshot(after_buckets, after_quotas)
    return Allowed(new, Debit(tokens, bucket_debits, quota_debits), _statuses(new, now_ms))


def _denied(limiting: list[Limiting], seen: Snapshot, now_ms: int) -> Denied:
    order = list(Level)
    worst = min(limiting, key=lambda x: (_SEVERITY[x.reason], order.index(x.level)))
    waits = [x.wait_ms for x in limiting]
    retry = None if None in waits else max(w for w in waits if w is not None)
    ordered = tuple(sorted(limiting, key=lambda x: order.index(x.level)))
    return Denied(worst.level, worst.reason, retry, ordered, _statuses(seen, now_ms))


def refund(snapshot: Snapshot, debit: Debit, tokens: int, now_ms: int) -> Snapshot:
    """Give back `tokens` of `debit` on every level it touched (all of it at most)."""
    if tokens < 0:
        raise ValueError("a refund must not be negative")
    tokens = min(tokens, debit.tokens)
    buckets = dict(snapshot.buckets)
    for lv, units in debit.buckets.items():
        if lv in buckets:
            s = buckets[lv]
            give = units if tokens == debit.tokens else min(units, tokens * s.limit.scale)
            buckets[lv] = BucketSlot(s.limit, bucket.refund(s.limit, s.state, give, now_ms))
    quotas = dict(snapshot.quotas)
    for lv, qdebit in debit.quotas.items():
        if lv in quotas:
            q = quotas[lv]
            quotas[lv] = QuotaSlot(q.limit, quota.refund(q.limit, q.state, qdebit.last(tokens)))
    return Snapshot(buckets, quotas)


@dataclass(frozen=True, slots=True)
class Charged:
    """A charge that could not be refused (a settled excess): states, debit, overage per level."""

    snapshot: Snapshot
    debit: Debit
    overage: Mapping[Level, int] = field(default_factory=dict)


def charge(snapshot: Snapshot, tokens: int, now_ms: int) -> Charged:
    """Charge `tokens` on every level as far as each has room; report what did not fit.

    Overage is in tokens, rounded up for buckets (a part of a token that did not fit counts).
    """
    if not 0 <= tokens < SAFE_LIMIT:
        raise ValueError(f"a charge out of range: {tokens} (see units.token_count)")
    buckets: dict[Level, BucketSlot] = {}
    quotas: dict[Level, QuotaSlot] = {}
    b_debits: dict[Level, int] = {}
    q_debits: dict[Level, QuotaDebit] = {}
    overage: dict[Level, int] = {}
    for lv, s in snapshot.buckets.items():
        want = tokens * s.limit.scale
        state, got = bucket.charge_fitting(s.limit, s.state, want, now_ms)
        buckets[lv], b_debits[lv] = BucketSlot(s.limit, state), got
        if got < want:
            overage[lv] = -(-(want - got) // s.limit.scale)
    for lv, q in snapshot.quotas.items():
        qstate, qdebit, over = quota.charge_fitting(q.limit, q.state, tokens)
        quotas[lv], q_debits[lv] = QuotaSlot(q.limit, qstate), qdebit
        if over:
            overage[lv] = over
    debit = Debit(tokens, b_debits, q_debits)
    return Charged(Snapshot(buckets, quotas), debit, MappingProxyType(overage))
