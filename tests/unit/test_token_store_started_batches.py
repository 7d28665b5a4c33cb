"""RedisDecisionStore's batches over RedisWire without a task (ADR 0053): a fake wire."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis import exceptions as rx
from redis.asyncio import Redis

from leaky_tokens.token.adapters.redis_decision_store import RedisDecisionStore
from leaky_tokens.token.adapters.redis_wire import Endpoint, RedisWire
from leaky_tokens.token.domain.ports import StoreUnavailableError, Subject

ALICE = Subject("alice", "openai")
T0 = 1_780_000_000_000


class FakeWire:
    """`start` gives out futures the test answers; `execute` (the task path) answers
    `executed` replies at once and records each payload."""

    def __init__(self, connected: bool = True) -> None:
        self.connected = connected
        self.started: list[tuple[bytes, asyncio.Future[list[Any]]]] = []
        self.executed: list[bytes] = []
        self.replies: list[Any] = [3]
        self.tasks_at_start: list[int] = []

    def start(self, payload: bytes, count: int) -> asyncio.Future[list[Any]] | None:
        if not self.connected:
            return None
        self.tasks_at_start.append(len(asyncio.all_tasks()))
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.started.append((payload, future))
        return future

    async def execute(self, payload: bytes, count: int) -> list[Any]:
        self.executed.append(payload)
        return list(self.replies)

    async def close(self) -> None:
        pass


def store_on(wire: FakeWire) -> RedisDecisionStore:
    # The redis-py client is never used for script calls when a wire is given.
    return RedisDecisionStore(Redis(host="127.0.0.1", port=1), wire=wire)  # type: ignore[arg-type]


async def answered(wire: FakeWire, store: RedisDecisionStore, reply: Any) -> Any:
    refund = asyncio.ensure_future(store.refund(ALICE, "d-1", 5, T0, "test"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(wire.started) == 1
    _, future = wire.started[0]
    if isinstance(reply, BaseException):
        future.set_exception(reply)
    else:
        future.set_result(reply)
    return await refund


async def test_a_batch_goes_out_at_once_and_is_answered_without_a_task() -> None:
    wire = FakeWire()
    store = store_on(wire)
    done = await answered(wire, store, [4])
    assert (done.refunded, done.changed) == (4, True)
    assert wire.tasks_at_start == [2]  # the test's and the refund's: none for the batch
    assert b"EVALSHA" in wire.started[0][0]
    assert wire.executed == []


async def test_without_a_connection_the_batch_goes_through_execute() -> None:
    wire = FakeWire(connected=False)
    done = await store_on(wire).refund(ALICE, "d-1", 5, T0)
    assert done.refunded == 3
    assert wire.started == []
    assert len(wire.executed) == 1


@pytest.mark.parametrize(
    "error", [rx.TimeoutError("no reply within 100 ms"), rx.ConnectionError("lost"), OSError(9)]
)
async def test_a_failed_batch_is_the_store_being_unavailable(error: BaseException) -> None:
    wire = FakeWire()
    with pytest.raises(StoreUnavailableError) as info:
        await answered(wire, store_on(wire), error)
    assert info.value.__cause__ is error


async def test_an_unavailable_reply_fails_its_call_as_unavailable() -> None:
    wire = FakeWire()
    with pytest.raises(StoreUnavailableError, match="READONLY"):
        await answered(wire, store_on(wire), [rx.ReadOnlyError("READONLY replica")])


async def test_a_script_error_reply_is_raised_as_it_is() -> None:
    wire = FakeWire()
    with pytest.raises(rx.ResponseError, match="bad"):
        await answered(wire, store_on(wire), [rx.ResponseError("bad argument")])


async def test_scripts_the_server_forgot_are_sent_again_as_eval_once() -> None:
    wire = FakeWire()
    wire.replies = [7]
    done = await answered(wire, store_on(wire), [rx.NoScriptError("NOSCRIPT")])
    assert done.refunded == 7
    assert len(wire.executed) == 1
    assert b"EVAL\r\n" in wire.executed[0]
    assert b"EVALSHA" not in wire.executed[0]


async def test_the_real_wire_starts_only_on_a_live_connection() -> None:
    wire = RedisWire(Endpoint(port=1), timeout_s=1.0, connect_timeout_s=1.0)
    assert wire.start(b"*1\r\n$4\r\nPING\r\n", 1) is None  # not connected: execute connects
