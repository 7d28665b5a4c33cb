"""Calendar-aligned quota windows in a time zone: local midnight, Monday or the 1st, DST-safe."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from leaky_tokens.token.domain.units import to_ms


class Period(StrEnum):
    """How long a quota window lasts; each starts at local midnight."""

    DAILY = "daily"
    WEEKLY = "weekly"  # starts on Monday (ISO weeks)
    MONTHLY = "monthly"  # starts on the 1st


@dataclass(frozen=True, slots=True)
class QuotaWindow:
    """A window period in a time zone (an IANA name such as "Europe/Berlin")."""

    period: Period = Period.DAILY
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        ZoneInfo(self.timezone)  # raises for an unknown zone at policy load, not at a request


@dataclass(frozen=True, slots=True)
class WindowBounds:
    """The window containing a moment: [start_ms, end_ms) in epoch milliseconds."""

    start_ms: int
    end_ms: int


def _first_day(period: Period, day: date) -> date:
    if period is Period.DAILY:
        return day
    if period is Period.WEEKLY:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _next_first_day(period: Period, first: date) -> date:
    if period is Period.DAILY:
        return first + timedelta(days=1)
    if period is Period.WEEKLY:
        return first + timedelta(days=7)
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def _local_midnight(day: date, zone: ZoneInfo) -> int:
    # fold=0 picks the earlier instant of an ambiguous midnight, and for a midnight skipped by
    # a DST jump it applies the offset before the jump, which lands on the jump itself: both
    # are the first instant of that local day.
    return to_ms(datetime(day.year, day.month, day.day, tzinfo=zone))


def window_bounds(window: QuotaWindow, now: datetime) -> WindowBounds:
    """The calendar window containing `now`, computed on local dates (a day may be 23 or 25 h)."""
    zone = ZoneInfo(window.timezone)
    first = _first_day(window.period, now.astimezone(zone).date())
    start = _local_midnight(first, zone)
    end = _local_midnight(_next_first_day(window.period, first), zone)
    return WindowBounds(start, end)
