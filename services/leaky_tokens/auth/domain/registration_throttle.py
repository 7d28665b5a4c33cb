"""Registration budget per client address: N registrations per address per window."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING

from leaky_tokens.auth.domain.throttle import Attempts, address_key
from leaky_tokens.runtime.errors import ResourceExhaustedError

if TYPE_CHECKING:
    from leaky_tokens.auth.domain.ports import ThrottleStore
    from leaky_tokens.runtime.ports import Clock


@dataclass(frozen=True)
class RegistrationRule:
    """At most `budget` registrations per client address in each fixed `window`."""

    budget: int = 20
    window: timedelta = timedelta(hours=1)


class RegistrationThrottledError(ResourceExhaustedError):
    """This address used its registration budget: retry when the window ends."""

    def __init__(self, retry_after: timedelta, first: bool = True) -> None:
        self.first = first  # the window's first refusal for this address (the one audited)
        seconds = max(1, math.ceil(retry_after.total_seconds()))
        super().__init__(
            f"too many registrations from this address; retry in {seconds} s",
            retry_after_seconds=seconds,
            reason="REGISTRATION_THROTTLED",
        )


def _key(address: str) -> str:
    # Its own key space in the shared ThrottleStore: login failures are not registrations.
    return "r" + address_key(address)


class RegistrationThrottle:
    """Charges a registration to its address before the password is hashed.

    The state reuses Attempts: `failures` counts registrations (then refusals) in the window
    that began at `last_failure` and ends at `allowed_at`. Every attempt that passes
    validation counts (a taken username included: probing names is what the budget limits);
    an attempt the server never judged (hashing busy) is refunded.
    """

    def __init__(self, store: ThrottleStore, clock: Clock, rule: RegistrationRule) -> None:
        self._store = store
        self._clock = clock
        self._rule = rule

    async def admit(self, address: str) -> str | None:
        """Charge one registration; the key to refund with, None for no address."""
        if not address:
            return None  # in-process callers: there is no client to budget
        now = self._clock.now()
        refused: list[RegistrationThrottledError] = []

        def change(state: Attempts | None) -> Attempts | None:
            # Decided inside the store's atomic update, so parallel registrations all count.
            if state is None or now >= state.allowed_at:
                return Attempts(1, now, now + self._rule.window)
            if state.failures >= self._rule.budget:
                first = state.failures == self._rule.budget
                refused.append(RegistrationThrottledError(state.allowed_at - now, first))
            return replace(state, failures=state.failures + 1)

        key = _key(address)
        await self._store.update(key, change)
        if refused:
            raise refused[0]
        return key

    async def cancelled(self, key: str | None) -> None:
        """Give back the charge of an attempt the server did not judge."""
        if key is None:
            return

        def change(state: Attempts | None) -> Attempts | None:
            if state is None or state.failures <= 1:
                return None
            return replace(state, failures=state.failures - 1)

        await self._store.update(key, change)
