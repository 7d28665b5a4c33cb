"""The workers' Faust consumer (runtime/faust_consumer.py, ADR 0052): the hand-over of a
message to the conductor, without Kafka. The fetch loop itself runs in the workers'
integration tests (tests/integration/test_analytics_projection*.py, test_token_saga*)."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest
from mode import Service
from mode.utils.locks import Event

from leaky_tokens.runtime import faust_consumer
from leaky_tokens.runtime.faust_consumer import LeakyConsumer, LeakyTransport
from leaky_tokens.runtime.faust_worker import faust_app


class Handing(Service):
    """What `_hand_over` uses of a consumer: `callback`, `suspend_flow`, `wait_first`."""

    def __init__(self, callback: Any) -> None:
        super().__init__()
        self.callback = callback
        self.suspend_flow = Event()
        self.raced = 0

    async def wait_first(self, *coros: Any, **options: Any) -> Any:
        self.raced += 1
        return await super().wait_first(*coros, **options)


async def hand_over(consumer: Handing, *messages: object) -> None:
    await LeakyConsumer._hand_over(consumer, list(messages))  # type: ignore[arg-type]


async def test_a_hand_over_with_room_is_done_in_one_step_without_a_race() -> None:
    got: list[object] = []

    async def callback(message: object) -> None:
        got.append(message)

    consumer = Handing(callback)
    await hand_over(consumer, "m1", "m2", "m3")
    await hand_over(consumer, "m4")
    assert got == ["m1", "m2", "m3", "m4"]
    assert consumer.raced == 0


async def test_a_chunk_blocked_half_way_delivers_the_rest_in_order_when_the_buffer_frees() -> None:
    room = asyncio.Event()
    got: list[object] = []

    async def callback(message: object) -> None:
        if message == "m2":
            await room.wait()  # the agent's buffer is full at the second message
        got.append(message)

    consumer = Handing(callback)
    handing = asyncio.ensure_future(hand_over(consumer, "m1", "m2", "m3"))
    await asyncio.sleep(0.01)
    assert got == ["m1"]
    room.set()
    await asyncio.wait_for(handing, 5)
    assert got == ["m1", "m2", "m3"]
    assert consumer.raced == 1


async def test_a_blocked_hand_over_gives_way_when_the_flow_is_suspended() -> None:
    entered, never = asyncio.Event(), asyncio.Event()
    cancelled: list[bool] = []

    async def callback(message: object) -> None:
        entered.set()
        try:
            await never.wait()  # a full agent buffer
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    consumer = Handing(callback)
    handing = asyncio.ensure_future(hand_over(consumer, "m"))
    await entered.wait()
    await asyncio.sleep(0)
    assert not handing.done()
    consumer.suspend_flow.set()  # a rebalance: Faust's stop_flow()
    await asyncio.wait_for(handing, 5)
    assert consumer.raced == 1
    await asyncio.sleep(0)
    assert cancelled == [True]  # not delivered later, after the rebalance


async def test_a_blocked_hand_over_completes_when_the_buffer_frees() -> None:
    room = asyncio.Event()
    got: list[object] = []

    async def callback(message: object) -> None:
        await room.wait()
        got.append(message)

    consumer = Handing(callback)
    handing = asyncio.ensure_future(hand_over(consumer, "m"))
    await asyncio.sleep(0.01)
    room.set()
    await asyncio.wait_for(handing, 5)
    assert got == ["m"]
    assert consumer.raced == 1


@pytest.mark.parametrize("blocks", [False, True])
async def test_a_hand_over_that_raises_raises(blocks: bool) -> None:
    async def callback(message: object) -> None:
        if blocks:
            await asyncio.sleep(0.01)
        raise RuntimeError("conductor broke")

    with pytest.raises(RuntimeError, match="conductor broke"):
        await hand_over(Handing(callback), "m")


def test_the_workers_apps_are_built_on_the_leaky_transport(tmp_path: Any) -> None:
    app = faust_app(
        "g", "127.0.0.1:9092,127.0.0.2:9093", tmp_path, commit_interval_s=1, session_timeout_s=30
    )
    assert isinstance(app, faust.App)
    assert [u.scheme for u in app.conf.broker] == [faust_consumer.TRANSPORT_SCHEME] * 2
    assert isinstance(app.transport, LeakyTransport)
    assert LeakyTransport.Consumer is LeakyConsumer


async def test_the_worker_consumer_fetches_with_a_short_broker_wait(tmp_path: Any) -> None:
    # Faust's 1,500 ms held a busy partition behind a quiet one of the same broker (ADR 0056).
    app = faust_app("g", "127.0.0.1:1", tmp_path, commit_interval_s=1, session_timeout_s=30)
    consumer = app.consumer
    assert isinstance(consumer, LeakyConsumer)
    thread = consumer._thread
    assert isinstance(thread, faust_consumer.LeakyConsumerThread)
    # Never started: its thread service's own event loop is closed by hand (as in the
    # projection's agent tests).
    thread.thread_loop.close()
    made = thread._create_worker_consumer(consumer.transport)
    try:
        assert made._fetch_max_wait_ms == faust_consumer.FETCH_MAX_WAIT_MS < 1500
    finally:
        await made.stop()  # never started: only marks it closed
