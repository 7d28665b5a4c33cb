"""The provider adapter: its JSON answer as MessageToDict gives it, retries and their waits."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import json_format, timestamp_pb2

from leaky.provider.v1 import provider_pb2 as pb
from leaky_tokens.token.adapters.circuit_breaker import BreakerState
from leaky_tokens.token.adapters.grpc_chat_provider import GrpcChatProvider, Resilience, answer
from leaky_tokens.token.domain.peers import ChatCall, ProviderUnavailableError


def full_reply() -> pb.ChatResponse:
    reply = pb.ChatResponse(
        id="3f1c2a9e-0000-4000-8000-000000000000",
        provider="openai",
        created=timestamp_pb2.Timestamp(seconds=1764600000, nanos=123000000),
        message="Stubbed OpenAI response",
        usage=pb.ChatUsage(prompt_tokens=3, completion_tokens=5, total_tokens=2**40),
    )
    reply.received.update(
        {"prompt": "hi", "maxTokens": 4, "t": 0.5, "ok": True, "none": None,
         "list": [1, "a", {"deep": [False]}], "nested": {"k": "v"}}
    )  # fmt: skip
    return reply


@pytest.mark.parametrize(
    "reply",
    [
        full_reply(),
        pb.ChatResponse(),
        pb.ChatResponse(message="m", usage=pb.ChatUsage(total_tokens=7)),
        pb.ChatResponse(usage=pb.ChatUsage(), created=timestamp_pb2.Timestamp()),
    ],
)
def test_the_answer_is_what_message_to_dict_gives(reply: pb.ChatResponse) -> None:
    assert answer(reply) == json_format.MessageToDict(reply)


def test_the_sample_reply_sets_every_field_so_a_new_one_is_noticed() -> None:
    reply = full_reply()
    assert [f.name for f, _ in reply.ListFields()] == [
        f.name for f in pb.ChatResponse.DESCRIPTOR.fields
    ]
    assert len(reply.usage.ListFields()) == len(pb.ChatUsage.DESCRIPTOR.fields)


def test_a_number_json_cannot_carry_is_refused() -> None:
    reply = pb.ChatResponse()
    reply.received.update({"x": float("inf")})
    with pytest.raises(ValueError, match="JSON cannot carry"):
        answer(reply)


def failure(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), None, None)


class Flaky:
    """A provider that fails with the given codes, then answers."""

    def __init__(self, *codes: grpc.StatusCode) -> None:
        self.codes, self.calls = list(codes), 0

    async def __call__(
        self, request: pb.ChatRequest, deadline: float, credential: str
    ) -> pb.ChatResponse:
        self.calls += 1
        if self.codes:
            raise failure(self.codes.pop(0))
        return pb.ChatResponse(message=f"{request.prompt} as {credential}")


RESILIENCE = Resilience(attempts=4, backoff_seconds=0.05, backoff_max_seconds=0.15)
CALL = ChatCall("openai", "hello", "tok")


async def test_retryable_failures_are_retried_with_capped_full_jitter_waits() -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    flaky = Flaky(
        grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE
    )
    provider = GrpcChatProvider(flaky, RESILIENCE, sleep=sleep)
    assert await provider.chat(CALL) == {"message": "hello as tok"}
    assert flaky.calls == 4
    assert len(waits) == 3
    for wait, cap in zip(waits, (0.05, 0.1, 0.15), strict=True):  # 0.2 capped at the max
        assert 0 <= wait <= cap


async def test_the_last_attempt_and_other_codes_are_not_retried() -> None:
    async def sleep(seconds: float) -> None:
        return None

    spent = Flaky(*[grpc.StatusCode.UNAVAILABLE] * 4)
    with pytest.raises(ProviderUnavailableError):
        await GrpcChatProvider(spent, RESILIENCE, sleep=sleep).chat(CALL)
    assert spent.calls == 4
    refused = Flaky(grpc.StatusCode.PERMISSION_DENIED)
    with pytest.raises(ProviderUnavailableError):
        await GrpcChatProvider(refused, RESILIENCE, sleep=sleep).chat(CALL)
    assert refused.calls == 1


class Hanging:
    """A provider whose calls never answer (until cancelled) while `hang` is set."""

    def __init__(self) -> None:
        self.calls, self.hang = 0, True

    async def __call__(
        self, request: pb.ChatRequest, deadline: float, credential: str
    ) -> pb.ChatResponse:
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()
        return pb.ChatResponse(message=f"{request.prompt} as {credential}")


async def test_calls_cancelled_by_their_callers_do_not_open_the_circuit() -> None:
    # A load generator stopping (or clients going away) with many calls in flight: before,
    # each cancellation counted as a provider failure and the circuit opened for everyone.
    hanging = Hanging()
    provider = GrpcChatProvider(hanging, Resilience(breaker_failures=5))
    calls = [asyncio.create_task(provider.chat(CALL)) for _ in range(20)]
    await asyncio.sleep(0)
    assert hanging.calls == 20
    for task in calls:
        task.cancel()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert provider.breaker.state is BreakerState.CLOSED
    hanging.hang = False  # the provider answers again: the circuit let the call through
    assert await provider.chat(CALL) == {"message": "hello as tok"}
