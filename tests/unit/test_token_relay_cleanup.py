"""A relay that stops mid-retry leaves no client behind: Kafka's producer and the Redis lease."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from leaky_tokens.token.adapters import kafka_event_bus
from leaky_tokens.token.adapters.relay_lease import RedisLease


class Closable:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class HangingProducer:
    """A producer whose stop() never returns (a broker gone mid-flush)."""

    def __init__(self) -> None:
        self._sender = Closable()
        self.client = Closable()
        self.stopping = asyncio.Event()

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.Event().wait()


async def test_a_producer_stop_cancelled_half_way_still_closes_its_sender_and_client() -> None:
    producer = HangingProducer()
    task = asyncio.ensure_future(kafka_event_bus._stop(producer))
    await producer.stopping.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):  # the cancellation is not swallowed
        await task
    assert producer._sender.closed
    assert producer.client.closed


class FakeRedis:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.closed = False

    async def eval(self, script: str, *args: Any) -> int:
        self.calls.append("eval")
        return 1

    async def aclose(self) -> None:
        self.closed = True


async def test_a_released_lease_is_never_claimed_again_so_no_connection_reopens() -> None:
    client = FakeRedis()
    lease = RedisLease(client, "lt:relay:lease", 1000)  # type: ignore[arg-type]
    assert await lease.claim()
    await lease.release()
    assert client.closed
    calls = len(client.calls)
    assert not await lease.claim()  # a relay task that outlived stop() asks once more
    assert len(client.calls) == calls
