"""Leaky bucket math in exact integers: leak, fit, debit, refund, waits (ADR 0018)."""

from __future__ import annotations

from dataclasses import dataclass

from leaky_tokens.token.domain.units import MILLI, SAFE_LIMIT, TOKEN_SCALE, ceil_div


@dataclass(frozen=True, slots=True)
class BucketLimit:
    """A bucket holding `capacity` hits; one hit weighs `scale` units; `leak_per_ms` units leak.

    For LLM tokens a hit is a token, `scale` is 10**6 (levels in micro-tokens) and
    `leak_per_ms` is the rate in milli-tokens per second (10**6 / 1000 cancel out), so a rate
    with up to three decimals leaks a whole number of units every millisecond: no rounding
    ever happens on the hot path, hence no drift.
    """

    capacity: int
    leak_per_ms: int
    scale: int = TOKEN_SCALE

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.leak_per_ms < 1 or self.scale < 1:
            raise ValueError(f"bucket limits must be positive: {self}")
        if self.capacity * self.scale >= SAFE_LIMIT:
            raise ValueError(f"bucket capacity {self.capacity} x {self.scale} reaches 2**53")

    @classmethod
    def tokens(cls, capacity: int, rate_milli_per_s: int) -> BucketLimit:
        """A token bucket: `capacity` tokens, leaking `rate_milli_per_s` / 1000 tokens a second."""
        return cls(capacity, rate_milli_per_s, TOKEN_SCALE)

    @property
    def capacity_units(self) -> int:
        """The capacity in units."""
        return self.capacity * self.scale

    @property
    def rate_per_s(self) -> float:
        """Hits leaked per second, for display only (never used in arithmetic)."""
        return self.leak_per_ms * MILLI / self.scale


@dataclass(frozen=True, slots=True)
class BucketState:
    """A bucket's fill `level` in units as of `updated_ms` (epoch milliseconds)."""

    level: int = 0
    updated_ms: int = 0


@dataclass(frozen=True, slots=True)
class BucketCheck:
    """Whether `hits` fit: the leaked state, the state after the debit, and the wait.

    `after` is None when the hits do not fit now; `wait_ms` is 0 when they fit, the exact wait
    until they would when they do not, and None when they never can (more than capacity).
    """

    state: BucketState
    after: BucketState | None
    wait_ms: int | None


def leak(limit: BucketLimit, state: BucketState, now_ms: int) -> BucketState:
    """The state at `now_ms`: the level minus what leaked since `updated_ms`, never below zero.

    A clock that went backwards leaks nothing and does not move `updated_ms` back, so the time
    between the two readings is never counted twice (no free capacity).
    """
    if now_ms <= state.updated_ms:
        return state
    drained = (now_ms - state.updated_ms) * limit.leak_per_ms
    # The Lua port compares before subtracting: `drained` may exceed 2**53 after a long idle
    # time, and the comparison of a rounded product with an exact level still orders right.
    level = 0 if drained >= state.level else state.level - drained
    return BucketState(level, now_ms)


def check(limit: BucketLimit, state: BucketState, hits: int, now_ms: int) -> BucketCheck:
    """Leak, then see whether `hits` more fit under the capacity.

    A zero-hit check (Envoy's "check now, charge when the stream ends") passes only while one
    whole hit still fits, so a bucket filled by after-the-fact charges does refuse it.
    """
    if hits < 0:
        raise ValueError("hits must not be negative")
    current = leak(limit, state, now_ms)
    if hits > limit.capacity:
        return BucketCheck(current, None, None)
    need = hits * limit.scale
    probe = max(need, limit.scale)
    free = limit.capacity_units - current.level
    if probe <= free:
        return BucketCheck(current, BucketState(current.level + need, current.updated_ms), 0)
    return BucketCheck(current, None, ceil_div(probe - free, limit.leak_per_ms))


def refund(limit: BucketLimit, state: BucketState, units: int, now_ms: int) -> BucketState:
    """Give back `units` debited earlier; what already leaked is not given back twice."""
    if units < 0:
        raise ValueError("a refund must not be negative")
    current = leak(limit, state, now_ms)
    return BucketState(max(0, current.level - units), current.updated_ms)


def charge_fitting(
    limit: BucketLimit, state: BucketState, units: int, now_ms: int
) -> tuple[BucketState, int]:
    """Charge up to `units` without passing capacity; returns the state and the units charged."""
    if units < 0:
        raise ValueError("a charge must not be negative")
    current = leak(limit, state, now_ms)
    # A reload may have lowered the capacity below the level: then nothing fits.
    charged = max(0, min(units, limit.capacity_units - current.level))
    return BucketState(current.level + charged, current.updated_ms), charged


def remaining_hits(limit: BucketLimit, state: BucketState) -> int:
    """Whole hits that fit now (the level must already be leaked to now)."""
    return max(0, limit.capacity_units - state.level) // limit.scale


def reset_after_ms(limit: BucketLimit, state: BucketState) -> int:
    """Milliseconds until the bucket is empty again (the level must already be leaked to now)."""
    return ceil_div(state.level, limit.leak_per_ms)
