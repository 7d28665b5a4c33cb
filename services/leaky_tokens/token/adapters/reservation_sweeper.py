"""The periodic task releasing expired reservations nobody touched (the scripts sweep too)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from leaky_tokens.token.domain.ports import DecisionStore, StoreUnavailableError

log = logging.getLogger(__name__)


class ReservationSweeper:
    """Calls `store.sweep_expired(now_ms())` every `interval_s` until stopped."""

    def __init__(self, store: DecisionStore, now_ms: Callable[[], int], interval_s: float) -> None:
        self._store = store
        self._now_ms = now_ms
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None
        self.released = 0

    async def sweep_once(self) -> int:
        """One sweep; an unreachable store is retried at the next interval."""
        try:
            found = await self._store.sweep_expired(self._now_ms())
        except StoreUnavailableError as error:
            log.warning("reservation sweep skipped: %s", error)
            return 0
        self.released += found
        return found

    def start(self) -> None:
        """Run in the background on the current loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="reservation-sweeper")

    async def stop(self) -> None:
        """Stop the background task."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.sweep_once()
