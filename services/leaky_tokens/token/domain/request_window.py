"""Request-rate counters for Envoy descriptors: upstream's epoch-aligned fixed windows."""

from __future__ import annotations

from dataclasses import dataclass

from leaky_tokens.token.domain.rls_config import UNIT_SECONDS, RateLimit


@dataclass(frozen=True, slots=True)
class WindowCount:
    """Hits counted in the window that starts at `window_start_ms`."""

    window_start_ms: int = 0
    count: int = 0


@dataclass(frozen=True, slots=True)
class WindowHit:
    """One descriptor's answer: within the limit or not, the counter after, what is left."""

    within: bool
    after: WindowCount
    remaining: int
    reset_after_ms: int


def window_ms(limit: RateLimit) -> int:
    """The window length of a limited (not unlimited) rule, in milliseconds."""
    if limit.unit is None:
        raise ValueError(f"{limit.full_key} has no unit (unlimited rules count nothing)")
    return UNIT_SECONDS[limit.unit] * 1000


def hit(limit: RateLimit, state: WindowCount, hits: int, now_ms: int) -> WindowHit:
    """Count `hits` in the current window if they stay within `requests_per_unit`.

    Windows are aligned to the epoch as upstream (now // length * length), so both answer the
    same. Unlike upstream's INCRBY, a refused hit is not counted: decisions are all or nothing.
    A clock that went back into an older window keeps counting in the newer one.
    """
    if hits < 0:
        raise ValueError("hits must not be negative")
    length = window_ms(limit)
    start = max(now_ms // length * length, state.window_start_ms)
    count = state.count if start == state.window_start_ms else 0
    reset = max(0, start + length - now_ms)
    if count + hits <= limit.requests_per_unit:
        after = WindowCount(start, count + hits)
        return WindowHit(True, after, limit.requests_per_unit - after.count, reset)
    return WindowHit(False, WindowCount(start, count), 0, reset)
