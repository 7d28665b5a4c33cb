"""The saga run inside the token service (embedded mode): in-process bus, relay, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky_tokens.runtime.event_log_file import EventLogFile, EventLogSettings
from leaky_tokens.runtime.ports import Clock
from leaky_tokens.token.adapters.event_bus import InProcessEventBus
from leaky_tokens.token.adapters.file_event_bus import FileEventBus
from leaky_tokens.token.adapters.outbox_relay import OutboxRelay
from leaky_tokens.token.adapters.purchase_settings import PurchaseSagaSettings, SagaRunner
from leaky_tokens.token.adapters.saga_contract import SagaParts
from leaky_tokens.token.adapters.saga_factory import build_saga_parts, open_saga_store
from leaky_tokens.token.adapters.saga_participants import subscribers
from leaky_tokens.token.adapters.sql_saga_store import SqlSagaStore
from leaky_tokens.token.domain.peers import PolicySource
from leaky_tokens.token.domain.ports import DecisionStore
from leaky_tokens.token.domain.saga_ports import PaymentGateway

log = logging.getLogger(__name__)


class EmbeddedSaga:
    """The participants subscribed to an in-process bus, the outbox relay feeding it, and a
    periodic recovery: the same parts the Faust worker runs over Kafka.

    A participant that raises fails the relay's batch, which is retried after a backoff (at
    least once, as from Kafka); `kick()` after a purchase commits runs the saga at once. With
    a FileEventBus as `bus` every saga event is also appended to the event log file first
    (analytics' purchase history, ADR 0038).
    """

    def __init__(
        self,
        parts: SagaParts,
        topic: str,
        *,
        recovery_interval_s: float,
        recovery_batch: int,
        bus: InProcessEventBus | None = None,
    ) -> None:
        self.parts = parts
        self.bus = bus if bus is not None else InProcessEventBus()
        for deliver in subscribers(parts.participants, topic):
            self.bus.subscribe(deliver)
        self.relay = OutboxRelay(parts.outbox, self.bus)
        self.bus.subscribe(self._handled)
        self._interval_s, self._batch = recovery_interval_s, recovery_batch
        self._task: asyncio.Task[None] | None = None

    async def _handled(self, topic: str, envelope: EventEnvelope) -> None:
        # Every participant has handled the envelope; what they emitted waits in the outbox.
        self.relay.kick()

    def kick(self) -> None:
        """A saga step is waiting in the outbox: relay it now."""
        self.relay.kick()

    async def recover_once(self) -> int:
        """One recovery pass; the relay is woken when it moved a saga."""
        moved = await self.parts.recovery.recover_stuck(self._batch)
        if moved:
            self.relay.kick()
        return moved

    def start(self) -> None:
        """Start relaying and recovering in the background."""
        self.relay.start()
        if self._task is None:
            self._task = asyncio.create_task(self._recover(), name="saga-recovery")

    async def stop(self) -> None:
        """Stop recovery and the relay (its pass in progress finishes), then the bus."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.relay.stop()
        await self.bus.close()

    async def _recover(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.recover_once()
            except Exception:  # the database may be away: the next pass tries again
                log.exception("saga recovery pass failed")


async def purchase_saga(
    settings: PurchaseSagaSettings, clock: Clock, store: DecisionStore, policy: PolicySource,
    payment: PaymentGateway | None, closers: list[Callable[[], Awaitable[None]]],
    event_log: EventLogSettings | None = None,
) -> tuple[SqlSagaStore, EmbeddedSaga | None]:  # fmt: skip
    """The purchases' store, and the saga itself unless an external worker runs it (ADR 0032).

    With `event_log` (embedded mode) the saga's events are also appended to that log file.
    What it starts is appended to `closers` (closed in reverse order).
    """
    saga_store = await open_saga_store(settings, clock)
    closers.append(saga_store.close)
    if settings.runner is not SagaRunner.EMBEDDED:
        return saga_store, None
    parts = await build_saga_parts(
        settings, clock=clock, saga_store=saga_store, balances=store, policy=policy,
        payment=payment,
    )  # fmt: skip
    saga = EmbeddedSaga(
        parts, settings.saga_topic, recovery_interval_s=settings.saga_recovery_interval_seconds,
        recovery_batch=settings.saga_recovery_batch,
        bus=None if event_log is None else FileEventBus(EventLogFile.open(event_log)),
    )  # fmt: skip
    saga.start()
    closers.append(saga.stop)
    return saga_store, saga
