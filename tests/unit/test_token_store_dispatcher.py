"""The batch dispatcher: concurrent calls share one send, results go back to their callers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from leaky_tokens.token.adapters.redis_dispatcher import BatchDispatcher


class Recorder:
    """A send that records each batch and answers call * 10 (a negative call fails)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate: asyncio.Event | None = None

    async def send(self, calls: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(calls))
        if self.gate is not None:
            await self.gate.wait()
        return [ValueError(f"bad {c}") if c < 0 else c * 10 for c in calls]


async def settle() -> None:
    """Let every runnable task run (a few loop iterations; no timer involved)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_calls_issued_together_go_out_as_one_batch() -> None:
    rec = Recorder()
    dispatch = BatchDispatcher(rec.send)
    results = await asyncio.gather(*(dispatch.submit(i) for i in range(50)))
    assert results == [i * 10 for i in range(50)]
    assert rec.batches == [list(range(50))]
    assert dispatch.batches_sent == 1


async def test_a_lone_call_is_sent_by_itself_without_waiting_for_company() -> None:
    rec = Recorder()
    dispatch = BatchDispatcher(rec.send)
    assert await dispatch.submit(7) == 70
    assert await dispatch.submit(8) == 80
    assert rec.batches == [[7], [8]]


async def test_a_full_batch_is_sent_at_once_and_the_rest_follows() -> None:
    rec = Recorder()
    dispatch = BatchDispatcher(rec.send, max_batch=4)
    results = await asyncio.gather(*(dispatch.submit(i) for i in range(10)))
    assert results == [i * 10 for i in range(10)]
    assert rec.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_one_failed_call_fails_only_its_caller() -> None:
    rec = Recorder()
    dispatch = BatchDispatcher(rec.send)
    results = await asyncio.gather(
        dispatch.submit(1), dispatch.submit(-2), dispatch.submit(3), return_exceptions=True
    )
    assert results[0] == 10
    assert results[2] == 30
    assert isinstance(results[1], ValueError)


async def test_a_failed_send_fails_every_call_of_its_batch() -> None:
    async def broken(calls: Sequence[int]) -> list[int | BaseException]:
        raise ConnectionError("down")

    dispatch = BatchDispatcher(broken)
    results = await asyncio.gather(dispatch.submit(1), dispatch.submit(2), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_calls_made_while_a_batch_is_in_flight_form_the_next_batch() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    dispatch = BatchDispatcher(rec.send)
    first = asyncio.ensure_future(dispatch.submit(1))
    await settle()  # the first batch leaves and waits on the gate
    second = [asyncio.ensure_future(dispatch.submit(i)) for i in (2, 3)]
    await settle()
    assert rec.batches == [[1], [2, 3]]  # sent without waiting for the first to finish
    rec.gate.set()
    assert await first == 10
    assert [await s for s in second] == [20, 30]


async def test_a_caller_that_gives_up_does_not_disturb_the_others() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    dispatch = BatchDispatcher(rec.send)
    quitter = asyncio.ensure_future(dispatch.submit(1))
    stayer = asyncio.ensure_future(dispatch.submit(2))
    await settle()
    quitter.cancel()
    rec.gate.set()
    assert await stayer == 20
    with pytest.raises(asyncio.CancelledError):
        await quitter


def test_a_batch_needs_room_for_one_call() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        BatchDispatcher(Recorder().send, max_batch=0)
