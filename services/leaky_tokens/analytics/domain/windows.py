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


def signed_split(
    start_ms: int, end_ms: int, empty_from_ms: int | None = None
) -> list[tuple[Resolution, int, int]]:
    """(resolution, bucket, +1 or -1): buckets whose signed sum is exactly [start, end).

    `split`, except that the minutes (hours) at a ragged edge are read as their whole hour
    (day) minus the minutes (hours) of it outside the window when those are fewer to read.
    Buckets from `empty_from_ms` on (after now: expected empty, so cheap) do not count as
    reads. A Report's 1440-minute window ending now then merges at most ~30 minute buckets
    with usage instead of 60, and about half the hours. Add the +1 buckets first, then take
    the -1 ones out (Totals.subtract). Exact whatever `empty_from_ms` says.
    """
    terms = [(r, b, 1) for r, b in split(start_ms, end_ms)]
    for small, big in ((Resolution.MINUTE, Resolution.HOUR), (Resolution.HOUR, Resolution.DAY)):
        groups: dict[int, list[int]] = {}
        for resolution, bucket, sign in terms:
            if resolution is small and sign > 0:
                groups.setdefault(big.floor(bucket), []).append(bucket)
        for parent, inside in groups.items():
            taken = set(inside)
            outside = [b for b in range(parent, parent + big.value, small.value) if b not in taken]
            cost = 1 + sum(1 for b in outside if empty_from_ms is None or b < empty_from_ms)
            if cost >= len(inside):
                continue
            terms = [t for t in terms if not (t[0] is small and t[2] > 0 and t[1] in taken)]
            terms.append((big, parent, 1))
            terms += [(small, b, -1) for b in outside]
    return terms
