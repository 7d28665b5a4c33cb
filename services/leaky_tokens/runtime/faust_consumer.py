"""Faust's aiokafka consumer with a cheaper hand-over of each fetched message (ADR 0052).

Faust's fetcher (`Consumer._drain_messages`) hands every message to the conductor with
`wait_first(callback(message), suspend_flow.wait())`: four tasks and an `asyncio.wait` per
message so that a hand-over blocked on a full agent buffer gives way when the flow is
suspended (a rebalance), the consumer stops or it crashes. That race is ~37 µs of CPU per
message on our machines, more than a third of Faust's whole per-message cost.

`LeakyConsumer` hands up to 100 fetched messages over as one task that delivers them in
order, and lets it run a step; almost always it is done then (the agent's buffer had room):
one task and one loop iteration per 100 messages (ADR 0055; one per message before, ADR
0052). Only a hand-over still blocked after that step is raced as Faust races it, by
`wait_first` on the same events, so the behaviour under rebalance, stop and crash is Faust's
(the messages of the chunk not delivered when the flow is suspended are dropped, as Faust
drops the one it was handing over; they were not acked, so they come again). The rest of
the loop (read offsets, offset gaps, `commit_every`, the stop and cancel handling) does what
Faust's does, for faust-streaming 0.15 (pinned in the lock files; the workers' integration
tests run through this loop).

Faust builds the worker's aiokafka consumer with `fetch_max_wait_ms=1500`: a fetch for
partitions with nothing new is held by the broker that long, and while it is held aiokafka
sends no other fetch to that broker. A worker owns partitions of the busy usage topic and of
the quiet purchase topic on the same broker; whenever the usage partition still had records
buffered when the fetch went out, the fetch held only the quiet partition, and the usage
partition waited up to 1.5 s behind it (measured: most of the projection's lag p99, ADR
0056). `LeakyConsumerThread` builds it with `FETCH_MAX_WAIT_MS` instead.

Used through the broker URL scheme `leaky-kafka://` (`TRANSPORT_SCHEME`), which `register()`
adds to Faust's transports; `faust_worker.faust_app` builds its apps on it.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from faust.transport import drivers
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka

TRANSPORT_SCHEME = "leaky-kafka"
YIELD_EVERY = 100  # messages handed over in one task, between two yields to the loop
# How long the broker may hold a fetch that finds nothing new (Faust: 1500 ms): the most a
# partition with records waits behind a quiet one of the same broker. An idle worker sends
# one fetch per broker this often.
FETCH_MAX_WAIT_MS = 100


class LeakyConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread; its worker consumer waits `FETCH_MAX_WAIT_MS` per fetch."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        if not hasattr(consumer, "_fetch_max_wait_ms"):  # read by start(), for its Fetcher
            raise RuntimeError("aiokafka changed: AIOKafkaConsumer has no _fetch_max_wait_ms")
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class LeakyConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer; the hand-over of a message to the conductor differs, and
    its fetches are held `FETCH_MAX_WAIT_MS` at most."""

    def _new_consumer_thread(self) -> LeakyConsumerThread:
        return LeakyConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # the fetcher's loop
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        read_offsets = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records = self.getmany(timeout=1.0)
                await self.sleep(0)  # getmany may return at once, loop after loop
                if self.should_stop:
                    self.diag.unset_flag(CONSUMER_FETCHING)
                    continue
                chunk: list[Any] = []
                async for tp, message in records:
                    offset = message.offset
                    last = read_offsets[tp]
                    if last is not None and offset < last:
                        continue  # read before (a seek back replays from the commit)
                    if last and offset - last > 1 and acks_enabled_for(message.topic):
                        await self._add_gap(tp, last + 1, offset)  # offsets never delivered
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await self.commit()
                    chunk.append(message)
                    read_offsets[tp] = offset
                    if len(chunk) >= YIELD_EVERY:
                        await self._hand_over(chunk)
                        chunk = []
                if chunk:
                    await self._hand_over(chunk)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _hand_over(self, messages: list[Any]) -> None:
        """`callback(message)` for each, in order, in one task given one step; raced as Faust
        races a hand-over only if that step did not finish them all."""
        callback = self.callback

        async def deliver() -> None:
            for message in messages:
                await callback(message)

        task = asyncio.ensure_future(deliver())
        await asyncio.sleep(0)  # the task's first step runs before this resumes
        if task.done():
            task.result()  # its exception, if it raised
            return
        await self.wait_first(task, self.suspend_flow.wait())
        if not task.done():
            task.cancel()  # what wait_first does with the loser it made itself


class LeakyTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with `LeakyConsumer`."""

    Consumer: ClassVar[Any] = LeakyConsumer


def register() -> None:
    """Make `leaky-kafka://` a Faust broker scheme (idempotent)."""
    drivers.TRANSPORTS.aliases[TRANSPORT_SCHEME] = f"{__name__}:LeakyTransport"
