"""ThrottleStore in process memory: per instance, bounded, forgotten on restart."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from leaky_tokens.auth.domain.throttle import Attempts


class InMemoryThrottleStore:
    """Least-recently-updated keys are dropped beyond `max_keys`, so a spray of random
    usernames costs bounded memory (each key is a fixed-size hash, see throttle.py)."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._max = max_keys
        self._states: OrderedDict[str, Attempts] = OrderedDict()

    async def update(
        self, key: str, change: Callable[[Attempts | None], Attempts | None]
    ) -> Attempts | None:
        # No await between read and write: atomic on the event loop.
        state = change(self._states.get(key))
        if state is None:
            self._states.pop(key, None)
            return None
        self._states[key] = state
        self._states.move_to_end(key)
        while len(self._states) > self._max:
            self._states.popitem(last=False)
        return state

    def __len__(self) -> int:
        return len(self._states)
