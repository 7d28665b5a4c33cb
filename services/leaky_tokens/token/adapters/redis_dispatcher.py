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
    """

    def __init__(
        self,
        send: Callable[[Sequence[C]], Awaitable[Sequence[R | BaseException]]],
        max_batch: int = 256,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._send = send
        self._max = max_batch
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
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await waiter

    def _flush(self) -> None:
        self._scheduled = False
        if not self._calls:
            return
        calls, waiters = self._calls, self._waiters
        self._calls, self._waiters = [], []
        self.batches_sent += 1
        task = asyncio.ensure_future(self._deliver(calls, waiters))
        self._inflight.add(task)  # keep a reference until done (the loop holds weak ones)
        task.add_done_callback(self._inflight.discard)

    async def _deliver(self, calls: list[C], waiters: list[asyncio.Future[R]]) -> None:
        try:
            results = await self._send(calls)
        except BaseException as error:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for waiter, result in zip(waiters, results, strict=True):
            if waiter.done():  # the caller gave up (cancelled, timed out)
                continue
            if isinstance(result, BaseException):
                waiter.set_exception(result)
            else:
                waiter.set_result(result)

    async def close(self) -> None:
        """Wait for the batches in flight."""
        if self._calls:
            self._flush()
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
