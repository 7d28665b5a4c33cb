"""Request-rate counting for ShouldRateLimit: its port and the all-or-nothing step's arithmetic."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from leaky_tokens.token.domain.request_window import WindowCount, WindowHit


@dataclass(frozen=True, slots=True)
class CounterHit:
    """`hits` on the counter `key` limited to `limit` per window of `window_ms`.

    `enforced` is False in shadow mode: the hits are counted but never refuse the request.
    """

    key: str
    limit: int
    window_ms: int
    hits: int
    enforced: bool = True


def window_start(hit: CounterHit, now_ms: int) -> int:
    """Start of the epoch-aligned window holding `now_ms` (upstream's now // unit * unit)."""
    return now_ms // hit.window_ms * hit.window_ms


@dataclass(frozen=True, slots=True)
class CountStep:
    """What one step counted: admitted or not, and one WindowHit per CounterHit, in order."""

    admitted: bool
    hits: tuple[WindowHit, ...]


def count_step(
    hits: Sequence[CounterHit], stored: Mapping[tuple[str, int], int], now_ms: int
) -> CountStep:
    """Count `hits` over the `stored` counts (keyed by counter key and window start).

    All or nothing: the request is admitted when every enforced hit stays within its limit;
    then every hit is counted (shadow ones past their limit too, as upstream counts them);
    otherwise nothing is. Hits on the same counter in one request add up in order. The Redis
    script applies exactly this rule; the adapter recomputes the answer here from the counts
    the script read, so both stores answer alike.
    """
    running: dict[tuple[str, int], int] = {}
    counted: list[tuple[CounterHit, int, int]] = []  # (hit, window start, count before)
    admitted = True
    for h in hits:
        if h.hits < 0:
            raise ValueError("hits must not be negative")
        start = now_ms // h.window_ms * h.window_ms
        slot = (h.key, start)
        before = running.get(slot)
        if before is None:
            before = stored.get(slot, 0)
        running[slot] = before + h.hits
        if h.enforced and before + h.hits > h.limit:
            admitted = False
        counted.append((h, start, before))
    out = []
    for h, start, before in counted:
        within = before + h.hits <= h.limit
        after = before + h.hits if admitted else before
        remaining = max(0, h.limit - after) if within else 0
        out.append(
            WindowHit(within, WindowCount(start, after), remaining, start + h.window_ms - now_ms)
        )
    return CountStep(admitted, tuple(out))


class RequestCounterStore(Protocol):
    """Fixed-window request counters, separate from the token decision store."""

    async def hit(self, hits: Sequence[CounterHit], now_ms: int) -> CountStep:
        """Count one request's hits in one atomic step (see count_step); raises
        StoreUnavailableError when the store cannot be reached."""
        ...

    async def close(self) -> None:
        """Release connections (nothing for the in-memory store)."""
        ...
