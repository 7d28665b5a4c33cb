"""One decision over user and org buckets and quotas: all or nothing, reasons, waits, refunds."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leaky_tokens.runtime.errors import InvalidArgumentError
from leaky_tokens.token.domain import bucket
from leaky_tokens.token.domain.bucket import BucketLimit, BucketState
from leaky_tokens.token.domain.decision import (
    Allowed,
    BucketSlot,
    Denied,
    Level,
    LevelStatus,
    QuotaSlot,
    Reason,
    Snapshot,
    charge,
    decide,
    refund,
)
from leaky_tokens.token.domain.quota import QuotaDebit, QuotaLimit, QuotaState
from leaky_tokens.token.domain.units import TOKEN_SCALE, token_count

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None)
NOW = 1_780_000_000_000
WINDOW = QuotaLimit(10_000, NOW - 3_600_000, NOW + 3_600_000)  # an hour left in the window
USER = BucketLimit.tokens(2000, 20_000)
ORG = BucketLimit.tokens(20_000, 200_000)


def snapshot(
    user_level: int = 0, org_level: int = 0, used: int = 0, org_used: int = 0, balance: int = 0
) -> Snapshot:
    return Snapshot(
        {
            Level.USER_BUCKET: BucketSlot(USER, BucketState(user_level * TOKEN_SCALE, NOW)),
            Level.ORG_BUCKET: BucketSlot(ORG, BucketState(org_level * TOKEN_SCALE, NOW)),
        },
        {
            Level.USER_QUOTA: QuotaSlot(WINDOW, QuotaState(WINDOW.window_start_ms, used, balance)),
            Level.ORG_QUOTA: QuotaSlot(
                QuotaLimit(100_000, WINDOW.window_start_ms, WINDOW.window_end_ms),
                QuotaState(WINDOW.window_start_ms, org_used, 0),
            ),
        },
    )


def test_an_allowed_request_debits_every_level_and_reports_each() -> None:
    got = decide(snapshot(), 500, NOW)
    assert isinstance(got, Allowed)
    assert got.snapshot.buckets[Level.USER_BUCKET].state.level == 500 * TOKEN_SCALE
    assert got.snapshot.buckets[Level.ORG_BUCKET].state.level == 500 * TOKEN_SCALE
    assert got.snapshot.quotas[Level.USER_QUOTA].state.used == 500
    assert got.snapshot.quotas[Level.ORG_QUOTA].state.used == 500
    assert got.statuses == (
        LevelStatus(Level.USER_BUCKET, 2000, 1500, 25_000),
        LevelStatus(Level.ORG_BUCKET, 20_000, 19_500, 2_500),
        LevelStatus(Level.USER_QUOTA, 10_000, 9_500, 3_600_000),
        LevelStatus(Level.ORG_QUOTA, 100_000, 99_500, 3_600_000),
    )


def test_the_org_bucket_refuses_even_when_the_user_has_room() -> None:
    got = decide(snapshot(org_level=19_990), 100, NOW)
    assert isinstance(got, Denied)
    assert (got.level, got.reason, got.retry_after_ms) == (
        Level.ORG_BUCKET,
        Reason.RATE_LIMITED,
        450,
    )
    assert got.retry_after == timedelta(milliseconds=450)
    assert got.statuses[1].reset_after == timedelta(seconds=99.95)  # 19,990 tokens at 200/s


def test_quota_exhaustion_outranks_a_rate_limit_and_the_wait_is_the_longest() -> None:
    got = decide(snapshot(user_level=2000, used=10_000), 100, NOW)
    assert isinstance(got, Denied)
    assert (got.level, got.reason) == (Level.USER_QUOTA, Reason.QUOTA_EXHAUSTED)
    assert got.retry_after_ms == 3_600_000
    assert [x.level for x in got.limiting] == [Level.USER_BUCKET, Level.USER_QUOTA]


def test_a_request_over_capacity_has_its_own_reason_and_no_retry() -> None:
    got = decide(snapshot(), 2001, NOW)
    assert isinstance(got, Denied)
    assert (got.level, got.reason, got.retry_after_ms) == (
        Level.USER_BUCKET,
        Reason.REQUEST_EXCEEDS_CAPACITY,
        None,
    )


def test_purchased_balance_carries_a_request_past_the_window_allowance() -> None:
    got = decide(snapshot(used=9_900, balance=1_000), 500, NOW)
    assert isinstance(got, Allowed)
    assert got.debit.quotas[Level.USER_QUOTA] == QuotaDebit(WINDOW.window_start_ms, 100, 400)
    assert got.snapshot.quotas[Level.USER_QUOTA].state.balance == 600


def test_a_refund_after_a_failed_provider_call_restores_every_level() -> None:
    before = snapshot(used=9_900, balance=1_000)
    got = decide(before, 500, NOW)
    assert isinstance(got, Allowed)
    assert refund(got.snapshot, got.debit, 500, NOW) == before


def test_levels_that_do_not_apply_are_simply_absent() -> None:
    only_user = Snapshot({Level.USER_BUCKET: BucketSlot(USER, BucketState(0, NOW))})
    got = decide(only_user, 2000, NOW)
    assert isinstance(got, Allowed)
    assert [s.level for s in got.statuses] == [Level.USER_BUCKET]


def test_charge_takes_what_fits_and_reports_the_rest() -> None:
    got = charge(snapshot(user_level=1990, used=9_995), 20, NOW)
    assert got.overage == {Level.USER_BUCKET: 10, Level.USER_QUOTA: 15}
    assert got.snapshot.buckets[Level.USER_BUCKET].state.level == 2000 * TOKEN_SCALE


def test_token_counts_outside_what_the_store_represents_exactly_are_refused() -> None:
    assert token_count(2**53 - 1, "tokens") == 2**53 - 1
    with pytest.raises(InvalidArgumentError) as caught:
        token_count(2**53, "tokens")
    assert caught.value.violations[0].field == "tokens"
    with pytest.raises(InvalidArgumentError):
        token_count(0, "tokens")
    assert token_count(0, "actual_tokens", minimum=0) == 0
    with pytest.raises(ValueError, match="out of range"):
        decide(snapshot(), 2**53, NOW)


levels = st.integers(0, 2500)


@PROPERTY
@given(
    levels,
    st.integers(0, 21_000),
    st.integers(0, 11_000),
    st.integers(0, 2000),
    st.integers(0, 3000),
)
def test_a_denial_leaves_every_state_unchanged_and_an_allowance_debits_all(
    user: int, org: int, used: int, balance: int, tokens: int
) -> None:
    before = snapshot(min(user, 2000), min(org, 20_000), used, 0, balance)
    got = decide(before, tokens, NOW)
    if isinstance(got, Denied):
        # Nothing to store: the caller keeps `before`, and a second look gives the same answer.
        assert decide(before, tokens, NOW) == got
        assert got.limiting
    else:
        for lv, slot in got.snapshot.buckets.items():
            assert slot.state.level == before.buckets[lv].state.level + tokens * TOKEN_SCALE
        for lv, q in got.snapshot.quotas.items():
            was = before.quotas[lv].state
            assert (q.state.used - was.used) + (was.balance - q.state.balance) == tokens
            assert q.state.balance >= 0


@PROPERTY
@given(
    levels,
    st.integers(0, 11_000),
    st.integers(0, 2000),
    st.integers(0, 2000),
    st.integers(0, 3000),
    st.integers(0, 10**7),
)
def test_refunds_never_exceed_debits_and_levels_never_go_negative(
    user: int, used: int, balance: int, tokens: int, back: int, later: int
) -> None:
    before = snapshot(min(user, 2000), 0, used, 0, balance)
    got = decide(before, tokens, NOW)
    if not isinstance(got, Allowed):
        return
    after = refund(got.snapshot, got.debit, back, NOW + later)
    for lv, slot in after.buckets.items():
        assert slot.state.level >= 0
        unrefunded = bucket.leak(slot.limit, got.snapshot.buckets[lv].state, NOW + later)
        assert slot.state.level >= unrefunded.level - min(back, tokens) * TOKEN_SCALE
    for lv, q in after.quotas.items():
        was = before.quotas[lv].state
        assert q.state.used >= 0
        assert q.state.balance <= was.balance  # never more balance than before the debit
        assert q.state.used >= was.used - got.debit.quotas[lv].from_window
