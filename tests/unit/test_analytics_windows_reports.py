"""Analytics rules without a server: window splits, anomaly math, series, the memory store."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leaky_tokens.analytics.adapters.memory_usage_store import InMemoryUsageStore
from leaky_tokens.analytics.domain import reports
from leaky_tokens.analytics.domain.facts import FactKind, PurchaseState
from leaky_tokens.analytics.domain.ports import Scope, ScopeKind
from leaky_tokens.analytics.domain.reports import Queries
from leaky_tokens.analytics.domain.totals import Totals
from leaky_tokens.analytics.domain.windows import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    Resolution,
    minute_window,
    signed_split,
    split,
)
from leaky_tokens.runtime.errors import InvalidArgumentError, PermissionDeniedError
from leaky_tokens.runtime.identity import ADMIN, Caller
from leaky_tokens.runtime.membership import InMemoryMembership
from tests.support.fakes import FakeClock
from tests.support.usage_facts import purchase, sourced, usage

# 2026-03-04 13:27:41.250 UTC: not on any bucket edge.
NOW = datetime(2026, 3, 4, 13, 27, 41, 250_000, tzinfo=UTC)
NOW_MS = reports.to_ms(NOW)
MINUTE_END = NOW_MS - NOW_MS % MINUTE_MS + MINUTE_MS  # end of the current minute
ADMIN_CALLER = Caller("root", frozenset({ADMIN}), frozenset())
ALICE = Caller("alice", frozenset({"USER"}), frozenset())


class CountingStore(InMemoryUsageStore):
    """Counts bucket calls per resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Resolution, int]] = []

    async def buckets(
        self, scope: Scope, provider: str, resolution: Resolution, starts: Sequence[int]
    ) -> Mapping[int, Totals]:
        self.calls.append((resolution, len(starts)))
        return await super().buckets(scope, provider, resolution, starts)


def queries(store: InMemoryUsageStore, members: dict[str, set[str]] | None = None) -> Queries:
    return Queries(store, InMemoryMembership(members or {}), FakeClock(NOW))


# -- windows ------------------------------------------------------------------------------


def test_a_minute_window_ends_with_the_current_minute() -> None:
    start, end = minute_window(NOW_MS, 60)
    assert end == MINUTE_END
    assert end - start == 60 * MINUTE_MS
    assert start <= NOW_MS < end


def test_a_day_long_unaligned_window_splits_into_minutes_hours_and_minutes() -> None:
    start, end = minute_window(NOW_MS, 1440)  # 13:28 yesterday .. 13:28 today
    shape = [r for r, _ in split(start, end)]
    assert shape == [Resolution.MINUTE] * 32 + [Resolution.HOUR] * 23 + [Resolution.MINUTE] * 28


def test_an_aligned_day_is_one_bucket() -> None:
    day = NOW_MS - NOW_MS % DAY_MS
    assert list(split(day, day + DAY_MS)) == [(Resolution.DAY, day)]
    assert list(split(day, day + DAY_MS + HOUR_MS + MINUTE_MS)) == [
        (Resolution.DAY, day),
        (Resolution.HOUR, day + DAY_MS),
        (Resolution.MINUTE, day + DAY_MS + HOUR_MS),
    ]


def test_split_refuses_edges_inside_a_minute() -> None:
    with pytest.raises(ValueError, match="whole minutes"):
        list(split(NOW_MS, NOW_MS + MINUTE_MS))


@given(start=st.integers(0, 40 * DAY_MS // MINUTE_MS), minutes=st.integers(0, 3 * 1440))
def test_split_covers_the_window_exactly_with_aligned_buckets(start: int, minutes: int) -> None:
    s = start * MINUTE_MS
    e = s + minutes * MINUTE_MS
    t = s
    for resolution, bucket in split(s, e):
        assert bucket == t, "buckets are back to back, oldest first"
        assert bucket % resolution.value == 0
        t += resolution.value
    assert t == e
    if minutes <= 1440:
        assert len(list(split(s, e))) <= 59 + 23 + 59 + 1


@given(
    start=st.integers(0, 40 * DAY_MS // MINUTE_MS),
    minutes=st.integers(0, 3 * 1440),
    hint=st.integers(0, 4 * 1440),
)
def test_signed_split_adds_up_to_the_window_minute_by_minute(
    start: int, minutes: int, hint: int
) -> None:
    s = start * MINUTE_MS
    e = s + minutes * MINUTE_MS
    weight: dict[int, int] = {}
    for resolution, bucket, sign in signed_split(s, e, s + hint * MINUTE_MS):
        assert bucket % resolution.value == 0
        assert sign in (1, -1)
        for t in range(bucket, bucket + resolution.value, MINUTE_MS):
            weight[t] = weight.get(t, 0) + sign
    assert {t for t, w in weight.items() if w} == set(range(s, e, MINUTE_MS))
    assert all(w in (0, 1) for w in weight.values())


def test_a_day_long_window_ending_now_reads_at_most_half_an_hour_of_minutes() -> None:
    start, end = minute_window(NOW_MS, 1440)  # ends 13:28, starts 13:28 the day before
    terms = signed_split(start, end, end)
    past = [b for r, b, _ in terms if r is Resolution.MINUTE and b < end]
    assert len(past) <= 30  # split: 32 + 28 minutes
    hours = [b for r, b, _ in terms if r is Resolution.HOUR and b < end]
    assert len(hours) <= 12  # split: 23
    # Today is read whole, its minutes and hours after now taken out (empty ones).
    assert (Resolution.DAY, end - end % DAY_MS, 1) in terms
    assert (Resolution.MINUTE, end, -1) in terms
    assert (Resolution.HOUR, end - end % HOUR_MS + HOUR_MS, -1) in terms
    # Without the hint, a subtraction is chosen only where it reads fewer buckets.
    assert len([t for t in signed_split(start, end) if t[0] is Resolution.MINUTE]) <= 60


def test_subtract_takes_a_merged_part_out_and_drops_users_left_without_events() -> None:
    whole, part = Totals(), Totals()
    facts = [usage(NOW_MS, user="u1", tokens=5), usage(NOW_MS, user="u2", tokens=7)]
    for fact in facts:
        whole.add(fact)
    part.add(facts[1])
    whole.subtract(part)
    assert whole == Totals.of(facts[:1])


# -- parameters ---------------------------------------------------------------------------


def test_defaults_and_clamps_are_the_originals() -> None:
    assert [reports.window_minutes(v) for v in (None, 0, -5, 1, 1440, 1441)] == [
        60, 60, 60, 1, 1440, 1440,
    ]  # fmt: skip
    assert [reports.sample_limit(v) for v in (None, 0, -1, 7, 5000, 9000)] == [
        5000, 5000, 5000, 7, 5000, 5000,
    ]  # fmt: skip
    assert [reports.baseline_windows(v) for v in (None, 0, 3, 24, 25)] == [4, 4, 3, 24, 24]
    assert [reports.list_limit(v) for v in (None, 0, -3, 1, 50, 200, 201)] == [
        20, 1, 1, 1, 50, 200, 200,
    ]  # fmt: skip


# -- anomalies ----------------------------------------------------------------------------


def test_anomaly_ratio_is_infinite_only_over_an_empty_baseline() -> None:
    assert reports.anomaly_ratio(0, 0.0) == 0.0
    assert reports.anomaly_ratio(5, 0.0) == math.inf
    assert reports.anomaly_ratio(30, 10.0) == 3.0
    assert reports.anomaly_ratio(0, 10.0) == 0.0


async def test_anomalies_compare_the_window_with_the_mean_of_the_ones_before() -> None:
    store = CountingStore()
    start, _ = minute_window(NOW_MS, 10)
    span = 10 * MINUTE_MS
    facts = [
        usage(start + 1, tokens=40),  # current window
        usage(NOW_MS, tokens=20, allowed=False),  # current window, denied counts too
        usage(start - 1, tokens=10),  # baseline window 1 (its last millisecond)
        usage(start - span, tokens=30),  # baseline window 1 (its first millisecond)
        usage(start - 2 * span, tokens=20),  # baseline window 2
        # window 3 empty
        usage(start - 4 * span + 5, tokens=60),  # window 4, the last one averaged
        usage(start - 4 * span - 1, tokens=1000),  # window 5: outside a 4-window baseline
        usage(start + 1, tokens=999, provider="qwen"),  # another provider
        usage(start + 1, tokens=5, kind=FactKind.REFUND),  # a give-back is no request
    ]
    await store.project(sourced(facts))
    q = queries(store)
    found = await q.anomalies(ADMIN_CALLER, "", "openai", "", "", 10, 4, 1.5, None)
    assert (found.current_tokens, found.baseline_average_tokens) == (60, 30.0)
    assert (found.ratio, found.anomaly, found.threshold_multiplier) == (2.0, True, 1.5)
    assert (found.window_start_ms, found.window_end_ms) == (start, NOW_MS)
    assert (found.baseline_windows, found.sample_limit) == (4, 5000)
    # Five windows of ten minutes (12:38 to 13:28) hold no whole hour: one call, minutes.
    assert [r for r, _ in store.calls] == [Resolution.MINUTE]

    at_threshold = await q.anomalies(ADMIN_CALLER, "", "openai", "", "", 10, 4, 2.0, None)
    assert at_threshold.anomaly, "ratio >= threshold is an anomaly"
    above = await q.anomalies(ADMIN_CALLER, "", "openai", "", "", 10, 4, 2.01, None)
    assert not above.anomaly
    floored = await q.anomalies(ADMIN_CALLER, "", "openai", "", "", 10, 4, 0.2, None)
    assert floored.threshold_multiplier == 1.0


async def test_an_empty_baseline_is_infinite_but_not_an_anomaly() -> None:
    store = InMemoryUsageStore()
    await store.project(sourced([usage(NOW_MS, tokens=7)]))
    found = await queries(store).anomalies(ADMIN_CALLER, "", "openai", "", "", None, None, None, 3)
    assert (found.current_tokens, found.baseline_average_tokens) == (7, 0.0)
    assert found.ratio == math.inf
    assert not found.anomaly
    assert (found.baseline_windows, found.threshold_multiplier, found.sample_limit) == (4, 2.0, 3)
    nothing = await queries(store).anomalies(ADMIN_CALLER, "", "qwen", "", "", None, None, None, 0)
    assert (nothing.ratio, nothing.anomaly) == (0.0, False)


async def test_a_non_finite_threshold_is_a_bad_argument() -> None:
    q = queries(InMemoryUsageStore())
    for bad in (math.nan, math.inf):
        with pytest.raises(InvalidArgumentError) as info:
            await q.anomalies(ADMIN_CALLER, "", "openai", "", "", None, None, bad, None)
        assert [v.field for v in info.value.violations] == ["thresholdMultiplier"]


async def test_long_windows_are_fetched_once_per_resolution() -> None:
    store = CountingStore()
    await store.project(sourced([usage(NOW_MS - 3 * DAY_MS)]))
    await queries(store).anomalies(ADMIN_CALLER, "", "openai", "", "", 1440, 24, None, None)
    # 25 windows of a day: days, hours and minutes, one call each.
    assert sorted(r.name for r, _ in store.calls) == ["DAY", "HOUR", "MINUTE"]


# -- series -------------------------------------------------------------------------------


async def test_a_series_has_every_bucket_zeros_included() -> None:
    store = InMemoryUsageStore()
    hour = NOW_MS - NOW_MS % HOUR_MS
    await store.project(
        sourced(
            [
                usage(hour - 2 * HOUR_MS + 5, tokens=3, user="a"),
                usage(hour - 2 * HOUR_MS + 9, tokens=4, user="b", allowed=False),
                usage(hour + 1, tokens=8, kind=FactKind.SETTLE),
            ]
        )
    )
    series = await queries(store).series(
        ADMIN_CALLER, "", "openai", "", "", Resolution.HOUR, hour - 2 * HOUR_MS + 7, NOW_MS
    )
    assert [t for t, _ in series.points] == [hour - 2 * HOUR_MS, hour - HOUR_MS, hour]
    first, middle, last = (totals for _, totals in series.points)
    assert (first.events, first.tokens, first.allowed_tokens, first.unique_users) == (2, 7, 3, 2)
    assert middle == Totals()
    assert (last.events, last.refunded_tokens) == (0, 8)


async def test_a_series_defaults_to_the_60_buckets_before_now() -> None:
    series = await queries(InMemoryUsageStore()).series(
        ADMIN_CALLER, "", "openai", "", "", Resolution.MINUTE, None, None
    )
    starts = [t for t, _ in series.points]
    assert len(starts) == 61
    assert starts[-1] == MINUTE_END - MINUTE_MS
    assert starts == list(range(starts[0], starts[-1] + 1, MINUTE_MS))
    assert all(t == Totals() for _, t in series.points)


@pytest.mark.parametrize(
    ("resolution", "start", "end", "field"),
    [
        (None, None, None, "resolution"),
        (Resolution.MINUTE, NOW_MS + 1, NOW_MS, "start"),
        (Resolution.MINUTE, NOW_MS - 1440 * MINUTE_MS, NOW_MS, "start"),  # 1441 buckets
        (Resolution.DAY, NOW_MS - 1440 * DAY_MS, NOW_MS, "start"),
    ],
)
async def test_a_series_range_is_checked(
    resolution: Resolution | None, start: int | None, end: int | None, field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        await queries(InMemoryUsageStore()).series(
            ADMIN_CALLER, "", "openai", "", "", resolution, start, end
        )
    assert [v.field for v in info.value.violations] == [field]


async def test_the_longest_series_is_1440_buckets() -> None:
    series = await queries(InMemoryUsageStore()).series(
        ADMIN_CALLER, "", "openai", "", "", Resolution.DAY, NOW_MS - 1439 * DAY_MS, NOW_MS
    )
    assert len(series.points) == 1440


# -- scope --------------------------------------------------------------------------------


async def test_scope_rules() -> None:
    q = queries(InMemoryUsageStore(), {"alice": {"org-a"}})
    own = await q.compare(ALICE, "", "", "", None)
    assert own.scope == Scope(ScopeKind.USER, "alice")
    assert (await q.compare(ALICE, "", "alice", "", None)).scope == own.scope
    assert (await q.compare(ALICE, "", "", "org-a", None)).scope == Scope(ScopeKind.ORG, "org-a")
    assert (await q.compare(ADMIN_CALLER, "", "", "", None)).scope == Scope.everyone()
    assert (await q.compare(ADMIN_CALLER, "", "", "org-z", None)).scope.id == "org-z"
    for user_id, org_id, reason in (
        ("bob", "", "NOT_YOUR_USER_ID"),
        ("", "org-b", "NOT_ORG_MEMBER"),
    ):
        with pytest.raises(PermissionDeniedError) as denied:
            await q.compare(ALICE, "", user_id, org_id, None)
        assert denied.value.reason == reason
    with pytest.raises(InvalidArgumentError) as both:
        await q.compare(ADMIN_CALLER, "", "alice", "org-a", None)
    assert [v.field for v in both.value.violations] == ["orgId"]


async def test_bad_input_is_refused_before_the_scope_is_checked() -> None:
    q = queries(InMemoryUsageStore())
    with pytest.raises(InvalidArgumentError) as info:
        await q.report(ALICE, "", "Open AI", "bob" * 50, "", None, None)
    assert [v.field for v in info.value.violations] == ["provider", "userId"]


# -- the memory store ---------------------------------------------------------------------


async def test_the_memory_store_projects_each_event_once() -> None:
    store = InMemoryUsageStore()
    a = usage(NOW_MS, tokens=5, org="org-a")
    b = usage(NOW_MS, tokens=7)  # same millisecond, another event: both kept
    await store.project(sourced([a, b]))
    await store.project(sourced([a, b], first_offset=10))  # replayed at other offsets
    hour = Resolution.HOUR.floor(NOW_MS)
    for scope in (Scope.everyone(), Scope(ScopeKind.USER, "u1")):
        found = await store.buckets(scope, "openai", Resolution.HOUR, [hour])
        assert (found[hour].events, found[hour].tokens) == (2, 12)
    org = await store.buckets(Scope(ScopeKind.ORG, "org-a"), "openai", Resolution.HOUR, [hour])
    assert org[hour].tokens == 5
    assert await store.providers(Scope(ScopeKind.ORG, "org-b")) == []
    latest = await store.latest(Scope.everyone(), "openai", 10)
    assert latest == sorted([a, b], key=lambda f: f.event_id, reverse=True)


async def test_latest_is_newest_first_and_leaves_out_give_backs() -> None:
    store = InMemoryUsageStore()
    old, new = usage(NOW_MS - 5), usage(NOW_MS)
    await store.project(sourced([new, usage(NOW_MS + 1, kind=FactKind.REFUND), old]))
    assert await store.latest(Scope.everyone(), "openai", 5) == [new, old]
    assert await store.latest(Scope.everyone(), "openai", 1) == [new]


async def test_a_purchase_keeps_its_latest_state_and_terminal_states_are_final() -> None:
    store = InMemoryUsageStore()
    t = NOW_MS
    await store.project(
        sourced(
            [
                purchase("s1", PurchaseState.PAYMENT_RESERVED, t + 10),
                purchase("s1", PurchaseState.TOKENS_ALLOCATED, t + 20),
                purchase("s1", PurchaseState.STARTED, t),  # late: only moves created_at
                purchase(
                    "s2", PurchaseState.FAILED, t + 50, reason="declined", user="u2", org="org-a"
                ),
                purchase("s2", PurchaseState.COMPENSATING, t + 40, user="u2", org="org-a"),
            ]
        )
    )
    views = await store.purchases(Scope.everyone(), 10)
    assert [p.saga_id for p in views] == ["s2", "s1"], "newest created first"
    s2, s1 = views
    assert (s1.state, s1.created_at_ms, s1.updated_at_ms) == (
        PurchaseState.TOKENS_ALLOCATED, t, t + 20,
    )  # fmt: skip
    assert (s2.state, s2.reason, s2.created_at_ms) == (PurchaseState.FAILED, "declined", t + 40)
    await store.project(sourced([purchase("s1", PurchaseState.COMPLETED, t + 5)]))
    await store.project(sourced([purchase("s1", PurchaseState.PAYMENT_CAPTURED, t + 30)]))
    (done,) = await store.purchases(Scope(ScopeKind.USER, "u1"), 1)
    assert done.state is PurchaseState.COMPLETED, "a terminal state is final"
    totals = await store.purchase_totals(Scope.everyone())
    assert (totals.completed_purchases, totals.completed_tokens, totals.failed_purchases) == (
        1, 500, 1,
    )  # fmt: skip
    assert [p.saga_id for p in await store.purchases(Scope(ScopeKind.ORG, "org-a"), 10)] == ["s2"]
