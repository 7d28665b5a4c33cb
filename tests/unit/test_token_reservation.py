"""Reserve, settle, release and expire: refunds, excess charges, idempotency, expiry sweep."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leaky_tokens.token.domain.bucket import BucketLimit, BucketState
from leaky_tokens.token.domain.decision import BucketSlot, Denied, Level, QuotaSlot, Snapshot
from leaky_tokens.token.domain.quota import QuotaLimit, QuotaState
from leaky_tokens.token.domain.reservation import (
    Reservation,
    ReservationStatus,
    Reserved,
    expire,
    release,
    reserve,
    settle,
)
from leaky_tokens.token.domain.units import TOKEN_SCALE

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None)
NOW = 1_780_000_000_000
TTL = 60_000
LIMIT = BucketLimit.tokens(2000, 20_000)
WINDOW = QuotaLimit(10_000, NOW - 1000, NOW + 86_399_000)


def snapshot(level: int = 0, used: int = 0, balance: int = 0) -> Snapshot:
    return Snapshot(
        {Level.USER_BUCKET: BucketSlot(LIMIT, BucketState(level * TOKEN_SCALE, NOW))},
        {Level.USER_QUOTA: QuotaSlot(WINDOW, QuotaState(WINDOW.window_start_ms, used, balance))},
    )


def held(before: Snapshot, estimate: int, rid: str = "r-1") -> Reserved:
    got = reserve(before, rid, estimate, NOW, TTL)
    assert isinstance(got, Reserved)
    return got


def level(s: Snapshot) -> int:
    return s.buckets[Level.USER_BUCKET].state.level


def used(s: Snapshot) -> int:
    return s.quotas[Level.USER_QUOTA].state.used


def test_reserve_debits_the_estimate_and_expires_after_the_ttl() -> None:
    got = held(snapshot(), 800)
    assert got.reservation.expires_at_ms == NOW + TTL
    assert got.reservation.status is ReservationStatus.PENDING
    assert (level(got.snapshot), used(got.snapshot)) == (800 * TOKEN_SCALE, 800)


def test_a_reservation_that_does_not_fit_is_denied_like_a_consume() -> None:
    assert isinstance(reserve(snapshot(level=1500), "r", 800, NOW, TTL), Denied)
    with pytest.raises(ValueError, match="time to live"):
        reserve(snapshot(), "r", 1, NOW, 0)


def test_settling_below_the_estimate_refunds_the_difference() -> None:
    got = held(snapshot(), 800)
    done = settle(got.snapshot, got.reservation, 300, NOW)
    assert (done.refunded, done.charged) == (500, 0)
    assert (level(done.snapshot), used(done.snapshot)) == (300 * TOKEN_SCALE, 300)
    assert done.reservation.status is ReservationStatus.SETTLED
    assert done.reservation.actual == 300


def test_settling_above_the_estimate_charges_the_excess_and_reports_overage() -> None:
    got = held(snapshot(level=1000), 800)  # the bucket is at 1800 of 2000
    done = settle(got.snapshot, got.reservation, 1200, NOW)
    assert done.charged == 400
    assert level(done.snapshot) == 2000 * TOKEN_SCALE  # never past capacity
    assert used(done.snapshot) == 1200
    assert done.reservation.overage == {Level.USER_BUCKET: 200}


def test_release_refunds_everything_and_a_second_call_changes_nothing() -> None:
    before = snapshot(used=100, balance=50)
    got = held(before, 800)
    first = release(got.snapshot, got.reservation, NOW)
    assert first.snapshot == before
    again = release(first.snapshot, first.reservation, NOW)
    assert (again.changed, again.snapshot, again.reservation) == (
        False,
        first.snapshot,
        first.reservation,
    )
    assert not settle(first.snapshot, first.reservation, 10, NOW).changed


def test_expire_picks_the_pending_reservations_whose_time_is_up() -> None:
    debit = held(snapshot(), 1).reservation.debit
    due = Reservation("due", 1, NOW, debit)
    later = Reservation("later", 1, NOW + 1, debit)
    settled = Reservation("done", 1, NOW - 5, debit, ReservationStatus.SETTLED, 1)
    assert expire([due, later, settled], NOW) == (due,)
    assert expire([due, later, settled], NOW + 1) == (due, later)


@PROPERTY
@given(
    st.integers(0, 2000),
    st.integers(0, 10_000),
    st.integers(0, 500),
    st.integers(0, 2000),
    st.integers(0, 4000),
    st.integers(0, 200_000),
    st.booleans(),
)
def test_settle_and_release_are_idempotent_and_refund_at_most_the_debit(
    start: int, was_used: int, balance: int, estimate: int, actual: int, later: int, by_settle: bool
) -> None:
    before = snapshot(start, was_used, balance)
    got = reserve(before, "r", estimate, NOW, TTL)
    if not isinstance(got, Reserved):
        return
    at = NOW + later
    first = (
        settle(got.snapshot, got.reservation, actual, at)
        if by_settle
        else release(got.snapshot, got.reservation, at)
    )
    assert first.changed
    assert first.refunded <= estimate
    quota_after = first.snapshot.quotas[Level.USER_QUOTA].state
    assert quota_after.balance <= balance  # a refund never mints purchased tokens
    assert quota_after.used >= 0
    assert level(first.snapshot) >= 0
    for second in (
        settle(first.snapshot, first.reservation, actual + 1, at + 5),
        release(first.snapshot, first.reservation, at + 5),
    ):
        assert not second.changed
        assert second.snapshot == first.snapshot
        assert second.reservation == first.reservation
