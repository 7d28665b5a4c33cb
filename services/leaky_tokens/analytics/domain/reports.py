"""The analytics queries over a UsageStore: usage, report, anomalies, series, provider
comparison and purchase history (no I/O but the store's).

Windows are whole minutes (windows.minute_window) summed exactly from rollup buckets
(windows.signed_split: split, with a ragged edge read as its whole hour or day minus the rest
when that is fewer buckets), never sampled: the report of a window equals `Totals.of` its
facts. Each query asks the store once per bucket resolution it needs. Defaults and limits
are the original system's, as the analytics proto documents them (ADR 0037).
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from leaky_tokens.analytics.domain import access
from leaky_tokens.analytics.domain.facts import UsageFact
from leaky_tokens.analytics.domain.ports import (
    PurchaseTotals,
    PurchaseView,
    Scope,
    UsageStore,
)
from leaky_tokens.analytics.domain.totals import Totals, UserShare
from leaky_tokens.analytics.domain.windows import (
    MINUTE_MS,
    Resolution,
    minute_window,
    signed_split,
)
from leaky_tokens.runtime.errors import Validator
from leaky_tokens.runtime.identity import Caller
from leaky_tokens.runtime.ports import Clock, Membership

DEFAULT_WINDOW_MINUTES = 60
MAX_WINDOW_MINUTES = 1440
DEFAULT_BASELINE_WINDOWS = 4
MAX_BASELINE_WINDOWS = 24
DEFAULT_THRESHOLD = 2.0
MIN_THRESHOLD = 1.0
MAX_SAMPLE_LIMIT = 5000
DEFAULT_LIST_LIMIT = 20  # usage events and purchases
MAX_LIST_LIMIT = 200
TOP_USERS = 5
MAX_SERIES_BUCKETS = 1440
DEFAULT_SERIES_SPAN = 60  # buckets before the end when a series names no start

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
# 0001-01-01T00:00:00Z, the first instant a Timestamp (and a datetime) holds; a day edge.
EARLIEST_MS = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // _MS


def to_ms(when: datetime) -> int:
    """Epoch milliseconds of an aware datetime (exact, no float rounding)."""
    return (when - _EPOCH) // _MS


# -- parameters: defaults and clamps (absent is None) -------------------------------------


def window_minutes(value: int | None) -> int:
    """Absent or <= 0 means 60; at most 1440."""
    if value is None or value <= 0:
        return DEFAULT_WINDOW_MINUTES
    return min(value, MAX_WINDOW_MINUTES)


def sample_limit(value: int | None) -> int:
    """Absent or <= 0 means 5000; at most 5000 (echoed only: nothing is sampled)."""
    if value is None or value <= 0:
        return MAX_SAMPLE_LIMIT
    return min(value, MAX_SAMPLE_LIMIT)


def baseline_windows(value: int | None) -> int:
    """Absent or <= 0 means 4; at most 24."""
    if value is None or value <= 0:
        return DEFAULT_BASELINE_WINDOWS
    return min(value, MAX_BASELINE_WINDOWS)


def threshold_multiplier(check: Validator, value: float | None) -> float:
    """Absent means 2.0; at least 1.0; NaN and infinities are bad arguments."""
    if value is None:
        return DEFAULT_THRESHOLD
    if not math.isfinite(value):
        check.fail("thresholdMultiplier", "must be a finite number")
        return DEFAULT_THRESHOLD
    return max(MIN_THRESHOLD, value)


def list_limit(value: int | None) -> int:
    """Absent means 20; clamped to [1, 200]."""
    if value is None:
        return DEFAULT_LIST_LIMIT
    return max(1, min(value, MAX_LIST_LIMIT))


# -- the arithmetic -----------------------------------------------------------------------


def anomaly_ratio(current: int, baseline_average: float) -> float:
    """current / baseline; +inf when the baseline is 0 and current is not, 0 when both are."""
    if baseline_average > 0:
        return current / baseline_average
    return math.inf if current > 0 else 0.0


def series_starts(resolution: Resolution, start_ms: int, end_ms: int) -> list[int]:
    """Every bucket start from start's bucket to end's (inclusive), oldest first."""
    first, last = resolution.floor(start_ms), resolution.floor(end_ms)
    return list(range(first, last + 1, resolution.value))


def has_usage(totals: Totals) -> bool:
    """A decision or a give-back counted in."""
    return totals.events > 0 or totals.refunded_tokens > 0


async def window_totals(
    store: UsageStore,
    scope: Scope,
    provider: str,
    windows: Sequence[tuple[int, int]],
    empty_from_ms: int | None = None,
) -> list[Totals]:
    """The exact totals of each minute-aligned [start, end) window, in order.

    Every window is split into day, hour and minute buckets, some taken out of a bigger one
    (`signed_split`; buckets from `empty_from_ms` on, after now, count as free); the buckets
    of all windows are fetched with one store call per resolution, the calls concurrently.
    """
    plans = [signed_split(start, end, empty_from_ms) for start, end in windows]
    wanted: dict[Resolution, set[int]] = defaultdict(set)
    for plan in plans:
        for resolution, start, _ in plan:
            wanted[resolution].add(start)
    # The resolutions' reads run concurrently (a Report's are day, hour and minute buckets).
    resolutions = list(wanted)
    found = await asyncio.gather(
        *(store.buckets(scope, provider, r, sorted(wanted[r])) for r in resolutions)
    )
    fetched = dict(zip(resolutions, found, strict=True))
    out: list[Totals] = []
    for plan in plans:
        totals = Totals()
        for wanted_sign in (1, -1):  # the bigger buckets in, then what lies outside out
            for resolution, start, sign in plan:
                bucket = fetched[resolution].get(start)
                if bucket is None or sign != wanted_sign:
                    continue
                if sign > 0:
                    totals.merge(bucket)
                else:
                    totals.subtract(bucket)
        out.append(totals)
    return out


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    """The latest decisions of a provider in a scope, newest first."""

    scope: Scope
    provider: str
    items: list[UsageFact]


@dataclass(frozen=True, slots=True)
class Report:
    """A provider's usage over one window [window_start_ms, window_end_ms]."""

    scope: Scope
    provider: str
    window_start_ms: int
    window_end_ms: int  # the query time
    totals: Totals
    sample_limit: int

    @property
    def average_tokens_per_event(self) -> float:
        return self.totals.tokens / self.totals.events if self.totals.events else 0.0

    @property
    def top_users(self) -> list[tuple[str, UserShare]]:
        return self.totals.top_users(TOP_USERS)


@dataclass(frozen=True, slots=True)
class Anomalies:
    """The current window's tokens against the mean of the windows before it."""

    scope: Scope
    provider: str
    window_start_ms: int
    window_end_ms: int  # the query time
    baseline_windows: int
    current_tokens: int
    baseline_average_tokens: float
    ratio: float
    threshold_multiplier: float
    anomaly: bool
    sample_limit: int


@dataclass(frozen=True, slots=True)
class Series:
    """One bucket per step of the range, zeros included, oldest first."""

    scope: Scope
    provider: str
    resolution: Resolution
    points: list[tuple[int, Totals]]


@dataclass(frozen=True, slots=True)
class ProviderUsage:
    """One provider's sums over a window and its share of the window's tokens."""

    provider: str
    totals: Totals
    token_share: float


@dataclass(frozen=True, slots=True)
class Comparison:
    """The providers with usage in a window, most tokens first (ties by name)."""

    scope: Scope
    window_start_ms: int
    window_end_ms: int  # the query time
    providers: list[ProviderUsage]


@dataclass(frozen=True, slots=True)
class PurchaseHistory:
    """A scope's purchases, newest first, with all-time totals."""

    scope: Scope
    purchases: list[PurchaseView]
    totals: PurchaseTotals


# -- the use cases ------------------------------------------------------------------------


class Queries:
    """The analytics queries: check the input, resolve the scope, read the store."""

    def __init__(self, store: UsageStore, membership: Membership, clock: Clock) -> None:
        self._store, self._members, self._clock = store, membership, clock

    async def _scope(
        self, check: Validator, caller: Caller, credential: str, user_id: str, org_id: str
    ) -> Scope:
        access.check_ids(check, user_id, org_id)
        check.raise_if_any()
        return await access.resolve_scope(caller, credential, user_id, org_id, self._members)

    async def usage(
        self, caller: Caller, credential: str, provider: str, user_id: str, org_id: str,
        limit: int | None,
    ) -> Usage:  # fmt: skip
        """The latest `limit` decisions (default 20, clamped to [1, 200])."""
        check = Validator()
        access.check_provider(check, provider)
        scope = await self._scope(check, caller, credential, user_id, org_id)
        items = await self._store.latest(scope, provider, list_limit(limit))
        return Usage(scope, provider, items)

    async def report(
        self, caller: Caller, credential: str, provider: str, user_id: str, org_id: str,
        minutes: int | None, limit: int | None,
    ) -> Report:  # fmt: skip
        """Totals over the last `minutes` whole minutes (the current one included)."""
        check = Validator()
        access.check_provider(check, provider)
        scope = await self._scope(check, caller, credential, user_id, org_id)
        now = to_ms(self._clock.now())
        start, end = minute_window(now, window_minutes(minutes))
        # Minutes after `end` (after now) are empty: reading the current hour whole is cheap.
        (totals,) = await window_totals(self._store, scope, provider, [(start, end)], end)
        return Report(scope, provider, start, now, totals, sample_limit(limit))

    async def anomalies(
        self, caller: Caller, credential: str, provider: str, user_id: str, org_id: str,
        minutes: int | None, baseline: int | None, threshold: float | None, limit: int | None,
    ) -> Anomalies:  # fmt: skip
        """The current window against the mean of `baseline` back-to-back earlier ones."""
        check = Validator()
        access.check_provider(check, provider)
        multiplier = threshold_multiplier(check, threshold)
        scope = await self._scope(check, caller, credential, user_id, org_id)
        now = to_ms(self._clock.now())
        width, count = window_minutes(minutes), baseline_windows(baseline)
        start, end = minute_window(now, width)
        span = width * MINUTE_MS
        windows = [(start - i * span, end - i * span) for i in range(count + 1)]
        current, *earlier = await window_totals(self._store, scope, provider, windows, end)
        average = sum(t.tokens for t in earlier) / count
        ratio = anomaly_ratio(current.tokens, average)
        return Anomalies(
            scope, provider, start, now, count, current.tokens, average, ratio, multiplier,
            average > 0 and ratio >= multiplier, sample_limit(limit),
        )  # fmt: skip

    async def series(
        self, caller: Caller, credential: str, provider: str, user_id: str, org_id: str,
        resolution: Resolution | None, start_ms: int | None, end_ms: int | None,
        check: Validator | None = None,
    ) -> Series:  # fmt: skip
        """Every bucket from start's to end's (default: now and 60 buckets before it).

        `check` may hold the violations of start and end found while decoding them: they are
        reported with the rest, and the range itself is then not judged.
        """
        check = check or Validator()
        times_refused = bool(check.violations)
        access.check_provider(check, provider)
        if times_refused:
            starts = []
            if resolution is None:
                check.fail("resolution", "must be RESOLUTION_MINUTE, _HOUR or _DAY")
        else:
            starts = self._series_range(check, resolution, start_ms, end_ms)
        scope = await self._scope(check, caller, credential, user_id, org_id)
        if resolution is None:  # refused by _scope's check already; this tells mypy
            raise AssertionError("resolution was checked")
        found = await self._store.buckets(scope, provider, resolution, starts)
        points = [(t, _copy(found.get(t))) for t in starts]
        return Series(scope, provider, resolution, points)

    def _series_range(
        self, check: Validator, resolution: Resolution | None, start_ms: int | None,
        end_ms: int | None,
    ) -> list[int]:  # fmt: skip
        """The bucket starts of a series, recording why the range is refused if it is."""
        if resolution is None:
            check.fail("resolution", "must be RESOLUTION_MINUTE, _HOUR or _DAY")
            return []
        end = end_ms if end_ms is not None else to_ms(self._clock.now())
        if start_ms is not None:
            start = start_ms
        else:  # never before the first instant a point's start can be sent as
            start = max(end - DEFAULT_SERIES_SPAN * resolution.value, EARLIEST_MS)
        if start > end:
            check.fail("start", "must not be after end")
            return []
        count = (resolution.floor(end) - resolution.floor(start)) // resolution.value + 1
        if count > MAX_SERIES_BUCKETS:
            check.fail("start", f"the range spans {count} buckets; at most {MAX_SERIES_BUCKETS}")
            return []
        return series_starts(resolution, start, end)

    async def compare(
        self, caller: Caller, credential: str, user_id: str, org_id: str, minutes: int | None
    ) -> Comparison:
        """Each provider with usage in the window, most tokens first, with its token share."""
        check = Validator()
        scope = await self._scope(check, caller, credential, user_id, org_id)
        now = to_ms(self._clock.now())
        start, end = minute_window(now, window_minutes(minutes))
        found: list[tuple[str, Totals]] = []
        for provider in await self._store.providers(scope):
            (totals,) = await window_totals(self._store, scope, provider, [(start, end)], end)
            if has_usage(totals):
                found.append((provider, totals))
        everything = sum(t.tokens for _, t in found)
        found.sort(key=lambda item: (-item[1].tokens, item[0]))
        rows = [ProviderUsage(p, t, t.tokens / everything if everything else 0.0) for p, t in found]
        return Comparison(scope, start, now, rows)

    async def purchases(
        self, caller: Caller, credential: str, user_id: str, org_id: str, limit: int | None
    ) -> PurchaseHistory:
        """The scope's purchases (default 20, clamped to [1, 200]) and its all-time totals."""
        check = Validator()
        scope = await self._scope(check, caller, credential, user_id, org_id)
        views = await self._store.purchases(scope, list_limit(limit))
        return PurchaseHistory(scope, views, await self._store.purchase_totals(scope))


def _copy(totals: Totals | None) -> Totals:
    out = Totals()
    if totals is not None:
        out.merge(totals)
    return out
