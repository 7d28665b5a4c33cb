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


async def test_with_one_batch_in_flight_the_next_calls_wait_for_it_and_leave_together() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    dispatch = BatchDispatcher(rec.send, max_inflight=1)
    first = asyncio.ensure_future(dispatch.submit(1))
    await settle()
    held = [asyncio.ensure_future(dispatch.submit(i)) for i in (2, 3)]
    await settle()
    held.append(asyncio.ensure_future(dispatch.submit(4)))
    await settle()
    assert rec.batches == [[1]]  # nothing else leaves while the first is out
    rec.gate.set()
    assert await first == 10
    assert [await h for h in held] == [20, 30, 40]
    assert rec.batches == [[1], [2, 3, 4]]  # all that waited, in one batch


async def test_a_full_batch_leaves_even_when_the_in_flight_bound_is_reached() -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()
    dispatch = BatchDispatcher(rec.send, max_batch=2, max_inflight=1)
    calls = [asyncio.ensure_future(dispatch.submit(i)) for i in range(5)]
    await settle()
    assert rec.batches == [[0, 1], [2, 3]]  # full batches never wait; the partial one does
    rec.gate.set()
    assert [await c for c in calls] == [0, 10, 20, 30, 40]


async def test_a_failed_batch_releases_the_calls_held_behind_it() -> None:
    gate = asyncio.Event()
    sent: list[list[int]] = []

    async def flaky(calls: Sequence[int]) -> list[int | BaseException]:
        sent.append(list(calls))
        if len(sent) == 1:
            await gate.wait()
            raise ConnectionError("down")
        return [c * 10 for c in calls]

    dispatch = BatchDispatcher(flaky, max_inflight=1)
    first = asyncio.ensure_future(dispatch.submit(1))
    await settle()
    held = asyncio.ensure_future(dispatch.submit(2))
    await settle()
    gate.set()
    with pytest.raises(ConnectionError):
        await first
    assert await held == 20
    assert sent == [[1], [2]]


async def test_spaced_flushes_hold_calls_after_a_flush_and_never_a_first_call() -> None:
    rec = Recorder()
    dispatch = BatchDispatcher(rec.send, min_interval_s=3600)  # the next flush: an hour away
    assert await dispatch.submit(7) == 70  # a first call (or one after a quiet hour) leaves
    later = [asyncio.ensure_future(dispatch.submit(i)) for i in (8, 9)]
    await settle()
    assert rec.batches == [[7]]  # held: the interval since the last flush has not passed
    await dispatch.close()  # close sends what is held
    assert [await c for c in later] == [80, 90]
    assert rec.batches == [[7], [8, 9]]


def test_the_bounds_must_be_sane() -> None:
    with pytest.raises(ValueError, match="max_inflight"):
        BatchDispatcher(Recorder().send, max_inflight=0)
    with pytest.raises(ValueError, match="min_interval_s"):
        BatchDispatcher(Recorder().send, min_interval_s=-1)
