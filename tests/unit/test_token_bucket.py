"""Leaky bucket math on explicit clock readings: exact leak, clock going back, waits, bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leaky_tokens.token.domain import bucket
from leaky_tokens.token.domain.bucket import BucketLimit, BucketState
from leaky_tokens.token.domain.units import TOKEN_SCALE, from_ms, to_ms

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None)
T0 = 1_780_000_000_000  # epoch ms in 2026
OPENAI = BucketLimit.tokens(2000, 20_000)  # 2000 tokens, 20 tokens/s
SLOW = BucketLimit.tokens(10, 1)  # 0.001 tokens/s: one token every 1000 s


def fill(limit: BucketLimit, tokens: int, now: int = T0) -> BucketState:
    got = bucket.check(limit, BucketState(0, now), tokens, now)
    assert got.after is not None
    return got.after


def test_a_full_bucket_leaks_exactly_the_rate_per_second() -> None:
    full = fill(OPENAI, 2000)
    assert bucket.leak(OPENAI, full, T0 + 1000).level == 1980 * TOKEN_SCALE
    assert bucket.leak(OPENAI, full, T0 + 1).level == 2000 * TOKEN_SCALE - 20_000


def test_a_fractional_rate_leaks_without_drift_over_many_small_steps() -> None:
    state = fill(SLOW, 10)
    for step in range(1, 1001):  # a thousand one-second steps: one token, not 0 or 0.999
        state = bucket.leak(SLOW, state, T0 + step * 1000)
    assert state.level == 9 * TOKEN_SCALE
    assert bucket.leak(SLOW, fill(SLOW, 10), T0 + 1_000_000) == state


def test_leak_never_drops_level_below_zero() -> None:
    state = fill(OPENAI, 5)
    assert bucket.leak(OPENAI, state, T0 + 10**12) == BucketState(0, T0 + 10**12)


def test_a_clock_going_back_leaks_nothing_and_gives_no_free_capacity() -> None:
    full = fill(OPENAI, 2000)
    back = bucket.leak(OPENAI, full, T0 - 60_000)
    assert back == full  # no negative leak, and updated_ms is not moved back
    # When the clock comes forward again, only the time after the first reading counts.
    assert bucket.leak(OPENAI, back, T0 + 1000).level == 1980 * TOKEN_SCALE
    assert bucket.check(OPENAI, back, 1, T0 - 30_000).after is None


def test_a_request_larger_than_capacity_can_never_fit() -> None:
    got = bucket.check(OPENAI, BucketState(0, T0), 2001, T0)
    assert got.after is None
    assert got.wait_ms is None
    assert bucket.check(OPENAI, BucketState(0, T0), 2000, T0).wait_ms == 0


def test_the_wait_is_the_exact_time_until_the_request_fits() -> None:
    full = fill(OPENAI, 2000)
    got = bucket.check(OPENAI, full, 30, T0)
    assert got.wait_ms == 1500  # 30 tokens at 20 tokens/s
    assert bucket.check(OPENAI, full, 30, T0 + 1499).after is None
    assert bucket.check(OPENAI, full, 30, T0 + 1500).after is not None


def test_a_denied_check_changes_nothing_but_the_leak() -> None:
    full = fill(OPENAI, 2000)
    got = bucket.check(OPENAI, full, 1, T0 + 10)
    assert got.after is None
    assert got.state == BucketState(2000 * TOKEN_SCALE - 200_000, T0 + 10)


def test_status_reports_whole_tokens_left_and_time_until_empty() -> None:
    state = bucket.leak(OPENAI, fill(OPENAI, 1000), T0 + 25)  # 0.5 token leaked
    assert bucket.remaining_hits(OPENAI, state) == 1000  # 1000.5 free, whole tokens only
    assert bucket.reset_after_ms(OPENAI, state) == 49_975  # 999.5 tokens at 20/s, rounded up


def test_refund_gives_back_what_did_not_leak_yet() -> None:
    state = fill(OPENAI, 100)
    assert bucket.refund(OPENAI, state, 100 * TOKEN_SCALE, T0).level == 0
    later = bucket.refund(OPENAI, state, 40 * TOKEN_SCALE, T0 + 1000)  # 20 leaked meanwhile
    assert later.level == 40 * TOKEN_SCALE
    assert bucket.refund(OPENAI, state, 100 * TOKEN_SCALE, T0 + 1000).level == 0


def test_a_lowered_capacity_admits_nothing_until_the_level_leaks_below_it() -> None:
    state = fill(OPENAI, 2000)
    smaller = BucketLimit.tokens(1000, 20_000)
    assert bucket.remaining_hits(smaller, state) == 0
    assert bucket.charge_fitting(smaller, state, 5, T0) == (state, 0)
    assert bucket.check(smaller, state, 10, T0).wait_ms == 50_500


def test_limits_that_would_leave_exact_doubles_are_refused() -> None:
    with pytest.raises(ValueError, match="2\\*\\*53"):
        BucketLimit.tokens(10**10, 1)
    with pytest.raises(ValueError, match="positive"):
        BucketLimit.tokens(10, 0)


def test_times_convert_to_exact_milliseconds() -> None:
    moment = datetime(2026, 6, 1, 12, 0, 0, 999_999, tzinfo=UTC)
    assert from_ms(to_ms(moment)) == moment - timedelta(microseconds=999)
    with pytest.raises(ValueError, match="naive"):
        to_ms(datetime(2026, 6, 1))


limits = st.builds(BucketLimit.tokens, st.integers(1, 5000), st.integers(1, 100_000))


@settings(PROPERTY, max_examples=100)
@given(limits, st.data())
def test_never_more_admitted_than_capacity_plus_leak_over_any_interval(
    limit: BucketLimit, data: st.DataObject
) -> None:
    state, now, clock_high = BucketState(0, T0), T0, T0
    # Intervals are measured on the latest time the stored state has seen (a denial stores
    # nothing, so a reading it saw is not one the next admission can know about).
    admitted: list[tuple[int, int]] = []  # (time, units)
    for _ in range(data.draw(st.integers(1, 30))):
        now += data.draw(st.integers(-5_000, 120_000))  # the clock may go back
        free = bucket.remaining_hits(limit, bucket.leak(limit, state, now))
        # Ask for exactly what is free, one more, or anything: the edges are where bugs hide.
        tokens = data.draw(st.sampled_from([free, free + 1]) | st.integers(0, 6000))
        got = bucket.check(limit, state, tokens, now)
        assert got.state.level >= 0
        if got.after is not None:
            state = got.after
            clock_high = max(clock_high, state.updated_ms)
            admitted.append((clock_high, tokens * limit.scale))
            assert state.level <= limit.capacity_units
    for i, (start, _) in enumerate(admitted):
        total = 0
        for end, units in admitted[i:]:
            total += units
            assert total <= limit.capacity_units + limit.leak_per_ms * (end - start)


@PROPERTY
@given(limits, st.integers(0, 10**6), st.lists(st.integers(0, 10**7), max_size=20))
def test_leaking_in_steps_equals_leaking_at_once(
    limit: BucketLimit, level: int, gaps: list[int]
) -> None:
    start = BucketState(min(level, limit.capacity_units), T0)
    stepped, now = start, T0
    for gap in gaps:
        now += gap
        stepped = bucket.leak(limit, stepped, now)
    assert stepped == bucket.leak(limit, start, now)


@PROPERTY
@given(limits, st.integers(0, 10**9), st.integers(0, 6000), st.integers(0, 10**6))
def test_the_wait_is_exact_to_the_millisecond(
    limit: BucketLimit, level: int, tokens: int, at: int
) -> None:
    state = BucketState(min(level * 1000, limit.capacity_units), T0)
    got = bucket.check(limit, state, tokens, T0 + at)
    if got.wait_ms is None:
        assert tokens > limit.capacity
    elif got.wait_ms > 0:
        later = T0 + at + got.wait_ms
        assert bucket.check(limit, state, tokens, later).after is not None
        assert bucket.check(limit, state, tokens, later - 1).after is None


def test_a_zero_cost_check_refuses_once_not_one_whole_token_fits() -> None:
    full = fill(OPENAI, 2000)
    got = bucket.check(OPENAI, full, 0, T0)
    assert (got.after, got.wait_ms) == (None, 50)  # one token leaks in 50 ms
    later = bucket.check(OPENAI, full, 0, T0 + 50)
    assert later.after == later.state  # passes, and charges nothing


def double_leak_and_fit(
    limit: BucketLimit, level: int, updated: int, now: int, hits: int
) -> tuple[float, float, bool]:
    """The Lua port's steps (ADR 0018) in IEEE doubles, as Lua 5.1 computes them."""
    lv, up, t = float(level), float(updated), float(now)
    if t > up:
        drained = (t - up) * float(limit.leak_per_ms)
        lv = 0.0 if drained >= lv else lv - drained
        up = t
    need = float(hits) * float(limit.scale)
    free = float(limit.capacity_units) - lv
    fits = hits <= limit.capacity and max(need, float(limit.scale)) <= free
    return (lv + need if fits else lv), up, fits


big_limits = st.builds(
    BucketLimit,
    st.integers(1, 9_007_199_254),
    st.integers(1, 10**12),
    st.just(TOKEN_SCALE),
)


@PROPERTY
@given(big_limits, st.data())
def test_doubles_reproduce_the_integer_math_below_2_53(
    limit: BucketLimit, data: st.DataObject
) -> None:
    level = data.draw(st.integers(0, limit.capacity_units))
    updated = data.draw(st.integers(T0 - 10**9, T0 + 10**9))
    now = updated + data.draw(st.integers(-(10**9), 10**12))
    hits = data.draw(st.integers(0, limit.capacity + 1))
    got = bucket.check(limit, BucketState(level, updated), hits, now)
    lv, up, fits = double_leak_and_fit(limit, level, updated, now, hits)
    assert fits == (got.after is not None)
    expected = got.after or got.state
    assert (lv, up) == (float(expected.level), float(expected.updated_ms))
    assert lv == int(lv)  # every value the script stores is an exact integer
