"""InMemoryRequestCounter: request-rate windows in one process (embedded mode and tests)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from leaky_tokens.token.domain.rate_counter import CounterHit, CountStep, count_step, window_start


class InMemoryRequestCounter:
    """The RequestCounterStore in a dict; one lock-protected step per request.

    Counters of windows that ended are dropped when a later hit finds them (the TTL Redis
    gives its keys), so the dict holds at most the live windows.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], tuple[int, int]] = {}  # -> (count, window end)
        self._lock = threading.Lock()
        self._next_sweep = 0

    async def hit(self, hits: Sequence[CounterHit], now_ms: int) -> CountStep:
        with self._lock:
            slots = [(h.key, window_start(h, now_ms)) for h in hits]
            stored = {}
            for slot in slots:
                found = self._counts.get(slot)
                if found is not None and found[1] <= now_ms:
                    del self._counts[slot]
                    found = None
                stored[slot] = found[0] if found is not None else 0
            step = count_step(hits, stored, now_ms)
            if step.admitted:
                for h, slot, result in zip(hits, slots, step.hits, strict=True):
                    self._counts[slot] = (result.after.count, slot[1] + h.window_ms)
            self._expire(now_ms)
            return step

    def _expire(self, now_ms: int) -> None:
        # At most one full sweep a second, so a hit stays O(descriptors) on average.
        if now_ms >= self._next_sweep:
            self._next_sweep = now_ms + 1000
            for slot in [s for s, (_, end) in self._counts.items() if end <= now_ms]:
                del self._counts[slot]

    async def close(self) -> None:
        return None
