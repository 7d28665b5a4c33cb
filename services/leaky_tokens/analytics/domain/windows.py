"""Minute-aligned windows and their exact split into day, hour and minute buckets (UTC)."""

from __future__ import annotations

import enum
from collections.abc import Iterator

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


class Resolution(enum.Enum):
    """A rollup bucket size; the value is its length in milliseconds."""

    MINUTE = MINUTE_MS
    HOUR = HOUR_MS
    DAY = DAY_MS

    def floor(self, t_ms: int) -> int:
        """Start of the bucket holding `t_ms` (epoch ms, UTC)."""
        return t_ms - t_ms % self.value


RESOLUTIONS = (Resolution.MINUTE, Resolution.HOUR, Resolution.DAY)


def minute_window(now_ms: int, minutes: int) -> tuple[int, int]:
    """[start, end) of the window of `minutes` whole minutes ending with the current one."""
    end = Resolution.MINUTE.floor(now_ms) + MINUTE_MS
    return end - minutes * MINUTE_MS, end


def split(start_ms: int, end_ms: int) -> Iterator[tuple[Resolution, int]]:
    """The fewest aligned buckets exactly covering [start, end) (both minute-aligned).

    Days where a whole day fits, hours where a whole hour does, minutes at the ragged edges:
    a 1440-minute window is at most 59 + 23 + 59 buckets (plus a day when aligned).
    """
    if start_ms % MINUTE_MS or end_ms % MINUTE_MS:
        raise ValueError("window edges must be whole minutes")
    t = start_ms
    while t < end_ms:
        for resolution in reversed(RESOLUTIONS):
            if t % resolution.value == 0 and t + resolution.value <= end_ms:
                yield resolution, t
                t += resolution.value
                break
