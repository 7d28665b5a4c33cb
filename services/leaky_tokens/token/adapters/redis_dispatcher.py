"""Coalesce calls issued in the same event-loop iteration into one batch (one pipeline)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

C = TypeVar("C")
R = TypeVar("R")


class BatchDispatcher(Generic[C, R]):
    """Collects calls until the loop's next iteration or `max_batch` calls, then sends them.

    An idle dispatcher adds no delay: the first call schedules a flush with `call_soon`,
    which runs as soon as the tasks already runnable have had their turn, and the calls they
    issued meanwhile join the same batch. `send` returns one result per call, an exception
    standing for that call's failure; an exception raised by `send` fails the whole batch.
    Batches already sent stay in flight while the next one fills (no head-of-line wait).

    `max_inflight` (None: no bound) caps the batches in flight: once that many are out, new
    calls wait for the oldest to come back (or for `max_batch` of them), then leave together.
    Redis answers one connection's commands in order, so a call held back waits no longer
    than it would have queued behind that batch anyway, and the batches grow with the load
    instead of leaving one request each (grpc.aio starts each RPC in a loop iteration of
    its own; ADR 0034).

    `min_interval_s` (0: none) spaces the flushes: a call arriving sooner than that after the
    previous flush waits for the rest of the interval, so under load each batch gathers
    what arrived meanwhile (one write, one script call, one reply for all), while a call
    arriving after a quiet interval leaves at once (envoyproxy/ratelimit's
    REDIS_PIPELINE_WINDOW, applied only when busy).
    """

    def __init__(
        self,
        send: Callable[[Sequence[C]], Awaitable[Sequence[R | BaseException]]],
        max_batch: int = 256,
        max_inflight: int | None = None,
        min_interval_s: float = 0.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_inflight is not None and max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        if min_interval_s < 0:
            raise ValueError("min_interval_s must not be negative")
        self._send = send
        self._max = max_batch
        self._max_inflight = max_inflight
        self._running = 0  # batches sent, not yet answered
        self._interval = min_interval_s
        self._next = 0.0  # loop time before which no flush is due
        self._calls: list[C] = []
        self._waiters: list[asyncio.Future[R]] = []
        self._scheduled = False
        self._inflight: set[asyncio.Task[None]] = set()
        self.batches_sent = 0

    async def submit(self, call: C) -> R:
        """Queue one call and wait for its result."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[R] = loop.create_future()
        self._calls.append(call)
        self._waiters.append(waiter)
        if len(self._calls) >= self._max:
            self._flush()
        elif not self._scheduled and not self._full():
            self._schedule(loop)
        return await waiter

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = True
        wait = self._next - loop.time() if self._interval else 0.0
        if wait > 0:
            loop.call_later(wait, self._due)
        else:
            loop.call_soon(self._due)

    def _due(self) -> None:
        """A scheduled flush: it waits for a batch to come back if too many are out."""
        self._scheduled = False
        if not self._full():
            self._flush()

    def space(self, min_interval_s: float) -> None:
        """Change `min_interval_s` (applies from the next flush)."""
        if min_interval_s < 0:
            raise ValueError("min_interval_s must not be negative")
        self._interval = min_interval_s

    def _full(self) -> bool:
        return self._max_inflight is not None and self._running >= self._max_inflight

    def _flush(self) -> None:
        if not self._calls:
            return
        calls, waiters = self._calls, self._waiters
        self._calls, self._waiters = [], []
        self.batches_sent += 1
        self._running += 1
        if self._interval:
            self._next = asyncio.get_running_loop().time() + self._interval
        task = asyncio.ensure_future(self._deliver(calls, waiters))
        self._inflight.add(task)  # keep a reference until done (the loop holds weak ones)
        task.add_done_callback(self._inflight.discard)

    async def _deliver(self, calls: list[C], waiters: list[asyncio.Future[R]]) -> None:
        try:
            results = await self._send(calls)
        except BaseException as error:
            self._done()
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        self._done()
        for waiter, result in zip(waiters, results, strict=True):
            if waiter.done():  # the caller gave up (cancelled, timed out)
                continue
            if isinstance(result, BaseException):
                waiter.set_exception(result)
            else:
                waiter.set_result(result)

    def _done(self) -> None:
        """A batch came back: the calls held meanwhile leave now (no extra loop turn)."""
        self._running -= 1
        if self._calls and not self._scheduled and not self._full():
            if self._interval:
                self._schedule(asyncio.get_running_loop())
            else:
                self._flush()

    async def close(self) -> None:
        """Wait for the batches in flight."""
        if self._calls:
            self._flush()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
