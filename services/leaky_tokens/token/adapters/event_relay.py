"""The relay: store's event logs -> event bus, acknowledged in the store only once delivered."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry

from leaky_tokens.token.adapters import event_codec
from leaky_tokens.token.adapters.event_bus import EventBus, PublishError
from leaky_tokens.token.adapters.relay_lease import RelayLease, SoleLease
from leaky_tokens.token.adapters.relay_metrics import RelayMetrics
from leaky_tokens.token.domain.ports import DecisionStore, StoredEvent, StoreUnavailableError

log = logging.getLogger(__name__)
STOP_SECONDS = 5.0  # how long stop() waits for the loop, the lease and the bus
__all__ = ["EventRelay", "RelayMetrics"]


class EventRelay:
    """Reads each shard's log in order, publishes a batch, then acknowledges it in the store.

    Nothing is acknowledged before the bus confirmed it: a failed publish is retried, the
    same batch, after a doubling backoff, so a bus outage delays events and a crash at any
    point re-sends at most the unacknowledged batch (consumers de-duplicate by event_id).
    """

    def __init__(
        self,
        store: DecisionStore,
        bus: EventBus,
        topic: str,
        *,
        now_ms: Callable[[], int],
        lease: RelayLease | None = None,
        batch: int = 500,
        poll_s: float = 0.2,
        pass_s: float = 0.0,
        backoff_s: float = 0.2,
        backoff_max_s: float = 10.0,
        metrics: RelayMetrics | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        own_shards: frozenset[int] = frozenset(),
    ) -> None:
        self._store = store
        self._bus = bus
        self._topic = topic
        self._now_ms = now_ms
        self._lease = lease or SoleLease()
        self._batch = batch
        self._behind = False  # the last pass filled a batch from some shard and relayed
        self._poll = poll_s
        self._pass = pass_s
        self._backoff = backoff_s
        self._backoff_max = backoff_max_s
        self._metrics = metrics or RelayMetrics(CollectorRegistry())
        self._sleep = sleep
        self._own = own_shards
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._pending: dict[int, int] = {}  # per shard, for the pending gauge
        # Stores that can count their logs (all three of ours) make the gauge exact beyond
        # one batch; another store is counted by what one read found.
        self._backlog: Callable[[int], Awaitable[int]] | None = getattr(
            store, "pending_events", None
        )
        self.relayed = 0

    @property
    def metrics(self) -> RelayMetrics:
        """The relay's metrics (the bootstrap registers their collectors)."""
        return self._metrics

    @property
    def bus(self) -> EventBus:
        """Where events go (embedded mode: the file bus, the log analytics tails, ADR 0038)."""
        return self._bus

    async def relay_once(self) -> int:
        """One pass over the shards: the shared ones while holding the lease, this instance's
        own ones (its degraded-mode log) always; returns how many events were relayed.

        Every shard is read in one call (one round trip where the store batches it, ADR
        0035); what was found goes out in publishes of at most `batch` events (a shard's
        read is never split), each acknowledged in one call once the bus confirmed it. A
        shard the store cannot serve is skipped, so one down does not stop the others; when
        nothing was relayed because of that, `StoreUnavailableError` says so.
        """
        held = await self._claim()
        shards = []
        for shard in range(self._store.shard_count):
            if held or shard in self._own:
                shards.append(shard)
            else:
                self._count(shard, 0)  # another instance relays it
        oldest, more, unavailable = None, False, None
        waiting: list[tuple[int, list[StoredEvent]]] = []
        for shard, found in zip(shards, await self._read(shards), strict=True):
            if isinstance(found, StoreUnavailableError):
                self._metrics.failures.labels("store").inc()
                unavailable = found
                continue
            if isinstance(found, BaseException):
                raise found
            if not found:
                self._count(shard, 0)
                continue
            more = more or len(found) == self._batch
            await self._recount(shard, len(found), ask=len(found) == self._batch)
            first = found[0].event.occurred_at_ms
            oldest = first if oldest is None else min(oldest, first)
            waiting.append((shard, found))
        if oldest is not None:
            self._set_lag(oldest)
        total = 0
        for group in self._groups(waiting):
            shared = group[0][0] not in self._own
            if shared and not held:
                continue  # the lease went to another instance earlier in this pass
            delivered = await self._deliver(group, needs_lease=shared)
            if delivered is None:
                held = held and not shared  # the lease went to another instance mid-retry
                continue
            relayed, failed = delivered
            total += relayed
            unavailable = failed or unavailable
        if unavailable is not None and not total:
            raise unavailable
        if not more and unavailable is None:  # every log read to its end and relayed
            self._set_lag(None)
        self._behind = more and total > 0
        return total

    def _groups(
        self, waiting: list[tuple[int, list[StoredEvent]]]
    ) -> list[list[tuple[int, list[StoredEvent]]]]:
        """Shards' reads in publishes of at most `batch` events, shared and own apart."""
        groups: list[list[tuple[int, list[StoredEvent]]]] = []
        size = 0
        for shard, events in waiting:
            own = shard in self._own
            if (
                groups
                and (size + len(events) <= self._batch)
                and (groups[-1][0][0] in self._own) == own
            ):
                groups[-1].append((shard, events))
                size += len(events)
            else:
                groups.append([(shard, events)])
                size = len(events)
        return groups

    async def _deliver(
        self, group: list[tuple[int, list[StoredEvent]]], *, needs_lease: bool
    ) -> tuple[int, StoreUnavailableError | None] | None:
        """Publish the group's events until the bus confirms them, then acknowledge each
        shard's; (events acknowledged, an acknowledgement's failure), or None when it gave
        up (stopping, or the lease lost) with nothing acknowledged."""
        batch = [event_codec.envelope(stored.event) for _, events in group for stored in events]
        delay = self._backoff
        while True:
            if self._stopping:  # never acknowledged: relayed again after a restart
                return None
            try:
                await self._bus.publish(self._topic, batch)
                break
            except PublishError as error:
                self._metrics.failures.labels("publish").inc()
                log.warning(
                    "relay: publish of %d events failed, retry in %.1fs: %s",
                    len(batch),
                    delay,
                    error,
                )
                self._set_lag(min(events[0].event.occurred_at_ms for _, events in group))
                for shard, events in group:  # rises while the bus is down
                    await self._recount(shard, len(events), ask=True)
                await self._sleep(delay)
                delay = min(delay * 2, self._backoff_max)
                if needs_lease and not await self._claim():
                    return None
        # Delivered; should an ack fail, its shard's events are published again: duplicates.
        acked = await self._ack([(shard, events[-1].position) for shard, events in group])
        relayed, failed = 0, None
        for (shard, events), done in zip(group, acked, strict=True):
            if isinstance(done, StoreUnavailableError):
                self._metrics.failures.labels("store").inc()
                failed = done
                continue
            if isinstance(done, BaseException):
                raise done
            self._count(shard, max(0, self._pending.get(shard, 0) - len(events)))
            relayed += len(events)
        self._metrics.relayed.inc(relayed)
        self.relayed += relayed
        return relayed, failed

    async def _read(self, shards: list[int]) -> list[list[StoredEvent] | BaseException]:
        """Every shard's unacknowledged log from its start: in one call where the store
        batches them, else shard by shard; a shard's failure is its result."""
        if not shards:
            return []
        batch = getattr(self._store, "read_events_batch", None)
        try:
            if batch is not None:
                found: list[list[StoredEvent] | BaseException] = await batch(shards, self._batch)
                return found
        except StoreUnavailableError as error:
            return [error] * len(shards)
        each: list[list[StoredEvent] | BaseException] = []
        for shard in shards:
            try:
                each.append(await self._store.read_events(shard, "", self._batch))
            except StoreUnavailableError as error:
                each.append(error)
        return each

    async def _ack(self, acks: list[tuple[int, str]]) -> list[int | BaseException]:
        """Acknowledge each (shard, upto): in one call where the store batches them."""
        batch = getattr(self._store, "ack_events_batch", None)
        try:
            if batch is not None:
                done: list[int | BaseException] = await batch(acks)
                return done
        except StoreUnavailableError as error:
            return [error] * len(acks)
        each: list[int | BaseException] = []
        for shard, upto in acks:
            try:
                each.append(await self._store.ack_events(shard, upto))
            except StoreUnavailableError as error:
                each.append(error)
        return each

    async def run(self) -> None:
        """Relay until cancelled; an unreachable store is retried after the backoff."""
        delay = self._backoff
        # Checked on every turn as well as cancelled: a client library that swallows a
        # cancellation (aiokafka can, mid-send) must not keep a stopped relay running on
        # connections its stop() has closed (they would reopen, never to be closed again).
        while not self._stopping:
            started = asyncio.get_running_loop().time()
            try:
                found = await self.relay_once()
                delay = self._backoff
            except StoreUnavailableError as error:
                log.warning("relay: store unavailable, retry in %.1fs: %s", delay, error)
                await self._sleep(delay)
                delay = min(delay * 2, self._backoff_max)
                continue
            if not found:
                await self._sleep(self._poll)
                continue
            # Busy: passes at most every `pass_s`, or passes would repeat back to back,
            # each a read of every shard, costing more than the decisions themselves. A
            # pass that filled a batch has a backlog behind it: the next one starts at once,
            # so a backlog drains at the bus's pace, not batch / pass_s.
            left = self._pass - (asyncio.get_running_loop().time() - started)
            if left > 0 and not self._behind:
                await self._sleep(left)

    def start(self) -> None:
        """Run in the background on the current loop."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="event-relay")

    async def stop(self) -> None:
        """Stop relaying (what is not acknowledged stays in the store), give up the lease."""
        self._stopping = True
        if self._task is not None:
            # Bounded: a publish stuck in a client library must not hang the shutdown (what
            # it carried is unacknowledged, so it is relayed again after a restart). Cancelled
            # again each turn, in case a library swallowed the previous cancellation.
            deadline = asyncio.get_running_loop().time() + STOP_SECONDS
            while not self._task.done():
                self._task.cancel()
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    log.warning("relay: still stopping after %.0fs; leaving it", STOP_SECONDS)
                    break
                await asyncio.wait({self._task}, timeout=min(left, 0.25))
            self._task = None
        with contextlib.suppress(Exception):  # best effort: the lease expires anyway
            async with asyncio.timeout(STOP_SECONDS):
                await self._lease.release()
        try:
            async with asyncio.timeout(STOP_SECONDS):
                await self._bus.close()
        except TimeoutError:
            log.warning("relay: the event bus did not close in %.0fs", STOP_SECONDS)

    async def _claim(self) -> bool:
        try:
            held = await self._lease.claim()
        except Exception as error:  # Redis down: not the leader until it answers again
            log.warning("relay: lease check failed: %s", error)
            held = False
        self._metrics.leader.set(1 if held else 0)
        return held

    async def _recount(self, shard: int, read: int, *, ask: bool) -> None:
        """The shard's backlog: what the read found (all of it, when less than a batch), or
        when `ask`, the store's count (kept as it was if the store cannot answer now)."""
        if not ask or self._backlog is None:
            self._count(shard, read)
            return
        with contextlib.suppress(StoreUnavailableError):
            self._count(shard, max(read, await self._backlog(shard)))

    def _count(self, shard: int, pending: int) -> None:
        if self._pending.get(shard) != pending:
            self._pending[shard] = pending
            self._metrics.pending.set(sum(self._pending.values()))

    def _set_lag(self, oldest_ms: int | None) -> None:
        age = 0.0 if oldest_ms is None else max(0, self._now_ms() - oldest_ms) / 1000
        self._metrics.lag.set(age)
