"""The outbox relay: the saga store's outbox -> the event bus, marked only once delivered."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky_tokens.token.adapters.event_bus import EventBus, PublishError
from leaky_tokens.token.adapters.saga_contract import OutboxRecord, OutboxSource

log = logging.getLogger(__name__)
STOP_SECONDS = 5.0  # how long stop() waits for a pass in progress before cancelling it


class OutboxRelay:
    """Publishes pending outbox records in order, then marks them published.

    Nothing is marked before the bus confirmed it: a failed publish is retried, the same
    records, after a doubling backoff, so a bus outage or a crash delays events and re-sends
    at most the unmarked ones (consumers de-duplicate by event_id, participants are
    idempotent). Several relays on one outbox are safe for the same reason, only wasteful.
    `kick()` wakes the loop at once (a saga step just committed), else it polls.
    """

    def __init__(
        self,
        source: OutboxSource,
        bus: EventBus,
        *,
        batch: int = 200,
        poll_s: float = 0.5,
        backoff_s: float = 0.2,
        backoff_max_s: float = 10.0,
    ) -> None:
        self._source = source
        self._bus = bus
        self._batch = batch
        self._poll_s = poll_s
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.published = 0  # records delivered and marked, for tests and metrics

    def kick(self) -> None:
        """Run a pass now rather than at the next poll."""
        self._wake.set()

    async def run_once(self) -> int:
        """One pass: publish and mark what is pending now; how many records were delivered.

        Raises `PublishError` (nothing marked) when the bus refuses a batch.
        """
        delivered = 0
        while not self._stopping:
            records = await self._source.pending(self._batch)
            if not records:
                break
            await self._publish(records)
            await self._source.mark_published([r.seq for r in records])
            delivered += len(records)
            self.published += len(records)
            if len(records) < self._batch:
                break
        return delivered

    async def _publish(self, records: Sequence[OutboxRecord]) -> None:
        # One publish per topic, in seq order within it: order per partition key holds.
        by_topic: dict[str, list[EventEnvelope]] = defaultdict(list)
        for record in records:
            by_topic[record.topic].append(record.envelope)
        for topic, envelopes in by_topic.items():
            await self._bus.publish(topic, envelopes)

    def start(self) -> None:
        """Run passes in a background task until `stop()`."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="outbox-relay")

    async def stop(self) -> None:
        """Finish the pass in progress (up to STOP_SECONDS), then stop."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=STOP_SECONDS)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _loop(self) -> None:
        backoff = self._backoff_s
        while not self._stopping:
            # Cleared before the pass, not after: a kick during the pass (a step that just
            # committed, e.g. an in-process participant) runs the next pass at once.
            self._wake.clear()
            try:
                await self.run_once()
                backoff = self._backoff_s
                wait = self._poll_s
            except PublishError as error:
                log.warning("outbox relay: publish failed, retrying in %.1f s: %s", backoff, error)
                wait, backoff = backoff, min(backoff * 2, self._backoff_max_s)
            except Exception:  # the store failed: same retry, nothing was marked
                log.exception("outbox relay: pass failed, retrying in %.1f s", backoff)
                wait, backoff = backoff, min(backoff * 2, self._backoff_max_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
