"""Quota windows (calendar, time zone, DST) and purchased balances: debit order and refunds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from leaky_tokens.token.domain import quota
from leaky_tokens.token.domain.quota import QuotaDebit, QuotaLimit, QuotaState
from leaky_tokens.token.domain.units import from_ms, to_ms
from leaky_tokens.token.domain.windows import Period, QuotaWindow, window_bounds

BERLIN = ZoneInfo("Europe/Berlin")
DAY1 = QuotaLimit(1000, 1_000_000, 2_000_000)
DAY2 = QuotaLimit(1000, 2_000_000, 3_000_000)


def bounds(period: Period, zone: str, now: datetime) -> tuple[datetime, datetime]:
    got = window_bounds(QuotaWindow(period, zone), now)
    return from_ms(got.start_ms), from_ms(got.end_ms)


def test_a_daily_window_starts_at_local_midnight() -> None:
    start, end = bounds(Period.DAILY, "Europe/Berlin", datetime(2026, 7, 10, 23, 30, tzinfo=UTC))
    assert start == datetime(2026, 7, 11, tzinfo=BERLIN)  # 23:30 UTC is already the 11th there
    assert end == datetime(2026, 7, 12, tzinfo=BERLIN)


def test_dst_days_last_23_and_25_hours() -> None:
    spring = bounds(Period.DAILY, "Europe/Berlin", datetime(2026, 3, 29, 12, tzinfo=UTC))
    autumn = bounds(Period.DAILY, "Europe/Berlin", datetime(2026, 10, 25, 12, tzinfo=UTC))
    assert (spring[1] - spring[0]).total_seconds() == 23 * 3600
    assert (autumn[1] - autumn[0]).total_seconds() == 25 * 3600


def test_a_midnight_skipped_by_dst_starts_the_day_at_the_jump() -> None:
    # Chile jumps from 00:00 to 01:00 on 2026-09-06: the local day begins at 04:00 UTC.
    start, end = bounds(Period.DAILY, "America/Santiago", datetime(2026, 9, 6, 12, tzinfo=UTC))
    assert start == datetime(2026, 9, 6, 4, tzinfo=UTC)
    assert end == datetime(2026, 9, 7, 3, tzinfo=UTC)


def test_weekly_windows_start_on_monday_and_monthly_on_the_first() -> None:
    now = datetime(2026, 12, 31, 20, tzinfo=UTC)  # a Thursday
    assert bounds(Period.WEEKLY, "UTC", now) == (
        datetime(2026, 12, 28, tzinfo=UTC),
        datetime(2027, 1, 4, tzinfo=UTC),
    )
    assert bounds(Period.MONTHLY, "Asia/Tokyo", now) == (  # already January 1st in Tokyo
        datetime(2027, 1, 1, tzinfo=ZoneInfo("Asia/Tokyo")),
        datetime(2027, 2, 1, tzinfo=ZoneInfo("Asia/Tokyo")),
    )


def test_every_moment_lies_in_its_window() -> None:
    window = QuotaWindow(Period.DAILY, "America/New_York")
    for hour in range(0, 24 * 400, 7):
        now = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=hour)
        got = window_bounds(window, now)
        assert got.start_ms <= to_ms(now) < got.end_ms


def test_an_unknown_time_zone_is_refused() -> None:
    with pytest.raises(KeyError):
        QuotaWindow(Period.DAILY, "Mars/Olympus")


def test_the_window_allowance_is_spent_before_the_purchased_balance() -> None:
    state = QuotaState(1_000_000, used=900, balance=500)
    got = quota.check(DAY1, state, 300, 1_500_000)
    assert got.debit == QuotaDebit(1_000_000, from_window=100, from_balance=200)
    assert got.after == QuotaState(1_000_000, used=1000, balance=300)


def test_exhausted_quota_waits_for_the_next_window_or_forever() -> None:
    state = QuotaState(1_000_000, used=1000, balance=0)
    assert quota.check(DAY1, state, 1, 1_500_000).wait_ms == 500_000
    assert quota.check(DAY1, state, 1001, 1_500_000).wait_ms is None  # no window holds it
    assert quota.check(DAY1, QuotaState(1_000_000, 1000, 5), 1005, 1_500_000).wait_ms == 500_000


def test_a_new_window_resets_used_but_never_the_purchased_balance() -> None:
    spent = QuotaState(1_000_000, used=1000, balance=0)
    assert quota.roll(DAY2, spent) == QuotaState(2_000_000, used=0, balance=0)
    bought = quota.credit(spent, 400)
    assert quota.roll(DAY2, bought).balance == 400
    after = quota.check(DAY2, bought, 1400, 2_000_001).after
    assert after == QuotaState(2_000_000, used=1000, balance=0)
    # The purchase is gone for good: the next window brings the allowance only.
    day3 = QuotaLimit(1000, 3_000_000, 4_000_000)
    assert quota.roll(day3, after) == QuotaState(3_000_000, used=0, balance=0)


def test_a_clock_gone_back_into_the_previous_window_keeps_the_newer_one() -> None:
    state = QuotaState(2_000_000, used=700, balance=0)
    assert quota.roll(DAY1, state) == state
    assert quota.check(DAY1, state, 400, 1_999_999).after is None


def test_a_refund_returns_each_part_where_it_came_from() -> None:
    debit = QuotaDebit(1_000_000, from_window=100, from_balance=200)
    state = QuotaState(1_000_000, used=1000, balance=300)
    assert quota.refund(DAY1, state, debit) == QuotaState(1_000_000, used=900, balance=500)
    # Partial refunds give back the balance first: the last tokens taken came from there.
    assert debit.last(250) == QuotaDebit(1_000_000, from_window=50, from_balance=200)
    assert debit.last(150) == QuotaDebit(1_000_000, from_window=0, from_balance=150)
    assert debit.last(10_000) == debit


def test_a_refund_after_the_window_ended_restores_only_the_balance_part() -> None:
    debit = QuotaDebit(1_000_000, from_window=100, from_balance=200)
    state = QuotaState(1_000_000, used=1000, balance=300)
    assert quota.refund(DAY2, state, debit) == QuotaState(2_000_000, used=0, balance=500)


def test_charging_beyond_what_fits_reports_the_overage() -> None:
    state = QuotaState(1_000_000, used=950, balance=20)
    after, debit, over = quota.charge_fitting(DAY1, state, 100)
    assert (after, debit.total, over) == (QuotaState(1_000_000, 1000, 0), 70, 30)


def test_a_lowered_allowance_leaves_nothing_in_the_window() -> None:
    state = QuotaState(1_000_000, used=900, balance=0)
    lower = QuotaLimit(500, 1_000_000, 2_000_000)
    assert quota.window_remaining(lower, state) == 0
    assert quota.check(lower, state, 1, 1_500_000).after is None


def test_a_zero_token_check_needs_one_token_available() -> None:
    spent = QuotaState(1_000_000, used=1000, balance=0)
    assert quota.check(DAY1, spent, 0, 1_500_000).wait_ms == 500_000
    bought = quota.check(DAY1, QuotaState(1_000_000, 1000, 1), 0, 1_500_000)
    assert bought.debit == QuotaDebit(1_000_000, 0, 0)
