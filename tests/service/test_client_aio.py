"""AsyncLeakyClient against the same scripted in-process server as the synchronous client:
the shared call path (deadlines, retries, re-login, errors) and `async with reservation`."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from leaky.auth.v1 import auth_pb2
from leaky.token.v1 import token_pb2
from leaky_tokens.client import (
    AsyncLeakyClient,
    DeadlineExceeded,
    RateLimited,
    Reservation,
    Unavailable,
)
from leaky_tokens.runtime import errors
from tests.service.test_client import QUOTA, UNAVAILABLE, USER, held, login_answer
from tests.support.scripted_grpc import Script, answer, fail, serving


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def target(script: Script) -> Iterator[str]:
    with serving(script) as address:
        yield address


class AsyncSleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleeps() -> AsyncSleeps:
    return AsyncSleeps()


@pytest.fixture
async def client(target: str, sleeps: AsyncSleeps) -> AsyncIterator[AsyncLeakyClient]:
    async with AsyncLeakyClient(target, timeout=timedelta(seconds=5), sleep=sleeps) as made:
        await made.use_token("a.jwt.token", user_id=USER)
        yield made


async def test_reads_are_retried_and_an_unkeyed_consume_is_not(
    client: AsyncLeakyClient, script: Script, sleeps: AsyncSleeps
) -> None:
    script.steps["GetQuota"] = [fail(UNAVAILABLE), answer(QUOTA)]
    assert await client.get_quota("openai") == QUOTA
    assert len(script.calls("GetQuota")) == 2
    assert len(sleeps.waits) == 1
    script.steps["Consume"] = [fail(UNAVAILABLE), answer(token_pb2.ConsumeResponse(allowed=True))]
    with pytest.raises(Unavailable):
        await client.consume("openai", 1)
    assert len(script.calls("Consume")) == 1
    assert (await client.consume("openai", 1, idempotency_key="k")).allowed


async def test_a_denial_is_typed(client: AsyncLeakyClient, script: Script) -> None:
    denied = errors.ResourceExhaustedError("full", retry_after_seconds=2, reason="RATE_LIMITED")
    script.steps["Consume"] = [fail(denied)]
    with pytest.raises(RateLimited) as info:
        await client.consume("openai", 1, idempotency_key="k")
    assert info.value.retry_after == timedelta(seconds=2)
    assert len(script.calls("Consume")) == 1


async def test_a_call_past_its_deadline_is_deadline_exceeded(
    client: AsyncLeakyClient, script: Script
) -> None:
    release = threading.Event()

    def stuck(_request: Any, _context: grpc.ServicerContext) -> Any:
        release.wait(10)
        return token_pb2.ConsumeResponse(allowed=True)

    script.steps["Consume"] = [stuck]
    try:
        with pytest.raises(DeadlineExceeded):
            await client.consume("openai", 1, timeout=timedelta(milliseconds=200))
    finally:
        release.set()


async def test_login_renews_after_unauthenticated_and_api_keys_go_as_metadata(
    target: str, script: Script
) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    script.steps["Login"] = [answer(login_answer("old", later)), answer(login_answer("new", later))]
    expired = errors.UnauthenticatedError("token expired", reason="TOKEN_EXPIRED")
    script.steps["GetQuota"] = [fail(expired), answer(QUOTA)]
    async with AsyncLeakyClient(target) as client:
        await client.login("alice", "correct horse")
        assert client.user_id == USER
        assert await client.get_quota("openai") == QUOTA
    tokens = [m["authorization"] for _, m, _ in script.calls("GetQuota")]
    assert tokens == ["Bearer old", "Bearer new"]
    owner = auth_pb2.ValidateApiKeyResponse(user_id=USER)
    script.steps["ValidateApiKey"] = [answer(owner)]
    async with AsyncLeakyClient(target) as keyed:
        await keyed.use_api_key("lt_secret")
        await keyed.get_quota("openai")
    *_, (_, metadata, _) = script.calls("GetQuota")
    assert metadata["x-api-key"] == "lt_secret"


async def test_async_reservation_settles_on_success_and_releases_on_error(
    client: AsyncLeakyClient, script: Script
) -> None:
    script.steps["Reserve"] = [answer(held())]
    script.steps["Settle"] = [answer(token_pb2.SettleResponse(refunded_tokens=300))]
    script.steps["Release"] = [answer(token_pb2.ReleaseResponse(released_tokens=800))]
    async with client.reservation("openai", 800) as r:
        r.actual = 500
    assert r.settled is not None

    async def use(r: Reservation) -> None:
        raise KeyError("the LLM call failed")

    with pytest.raises(KeyError):
        async with client.reservation("openai", 800) as failed:
            await use(failed)
    assert failed.released is not None
    assert [(q.actual_tokens) for q, _, _ in script.calls("Settle")] == [500]
    assert [q.reservation_id for q, _, _ in script.calls("Release")] == ["rsv_1"]
