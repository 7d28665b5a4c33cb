"""ChatProvider over gRPC (leaky.provider.v1): timeout, retries, circuit breaker, bulkhead."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf import struct_pb2

from leaky.provider.v1 import provider_pb2, provider_pb2_grpc
from leaky_tokens.token.adapters.circuit_breaker import BreakerState, CircuitBreaker
from leaky_tokens.token.domain.peers import ChatCall, ProviderUnavailableError

# Only these mean "the call may not have reached a working provider": anything else
# (a refused credential, a bad argument) would fail the same way again.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# gRPC core's own retry layer off: this adapter retries (UNAVAILABLE included, which is what
# core's transparent retries cover), and core's layer holds a copy of every call's messages
# for a replay on every call (ADR 0035).
CHANNEL_OPTIONS = (("grpc.enable_retries", 0),)


@dataclass(frozen=True, slots=True)
class Resilience:
    """How the provider is called (settings: LEAKY_TOKEN_PROVIDER_*)."""

    timeout_seconds: float = 2.0
    attempts: int = 3
    backoff_seconds: float = 0.05
    backoff_max_seconds: float = 1.0
    breaker_failures: int = 5
    breaker_reset_seconds: float = 10.0
    max_concurrent: int = 64


class ChatStub:
    """What the adapter calls: ProviderServiceAsyncStub.Chat (tests give their own)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._chat = provider_pb2_grpc.ProviderServiceStub(channel).Chat  # one multicallable

    async def __call__(
        self, request: provider_pb2.ChatRequest, deadline: float, credential: str
    ) -> provider_pb2.ChatResponse:
        metadata = (("authorization", "Bearer " + credential),) if credential else ()
        return await self._chat(request, timeout=deadline, metadata=metadata)


Chat = Callable[[provider_pb2.ChatRequest, float, str], Awaitable[provider_pb2.ChatResponse]]


def _retryable(error: BaseException) -> bool:
    return isinstance(error, grpc.aio.AioRpcError) and error.code() in RETRYABLE


class GrpcChatProvider:
    """Calls the provider service with the caller's credential.

    Each attempt has `timeout_seconds`; UNAVAILABLE and DEADLINE_EXCEEDED are retried with
    full-jitter exponential backoff (before retry n: uniform(0, min(backoff_max_seconds,
    backoff_seconds * 2**(n-1))), tenacity's wait_random_exponential); `breaker_failures`
    failed calls in a row open the circuit for `breaker_reset_seconds` (then one trial
    call); at most `max_concurrent` calls are in flight, more are refused at once rather
    than queued (a bulkhead: a slow provider must not pile up every request the token
    service holds).
    """

    def __init__(
        self,
        chat: Chat,
        resilience: Resilience,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._chat, self._r, self._sleep, self._close = chat, resilience, sleep, close
        self.breaker = CircuitBreaker(
            resilience.breaker_failures, resilience.breaker_reset_seconds, monotonic
        )
        self._slots = asyncio.Semaphore(resilience.max_concurrent)

    @classmethod
    def connect(
        cls, target: str, resilience: Resilience, monotonic: Callable[[], float] = time.monotonic
    ) -> GrpcChatProvider:
        """An adapter with its own channel to `target` (host:port)."""
        channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)

        async def close() -> None:
            await channel.close(None)

        return cls(ChatStub(channel), resilience, monotonic=monotonic, close=close)

    async def close(self) -> None:
        """Close the channel, if this adapter opened it."""
        if self._close is not None:
            await self._close()

    async def chat(self, call: ChatCall) -> Mapping[str, object]:
        if self._slots.locked():
            raise ProviderUnavailableError("the provider concurrency limit is reached")
        trial = self.breaker.state is BreakerState.HALF_OPEN  # read with allow(), no await
        if not self.breaker.allow():
            raise ProviderUnavailableError("the provider circuit is open")
        async with self._slots:
            try:
                reply = await self._with_retries(call)
            except grpc.aio.AioRpcError as error:
                self.breaker.failed()
                raise ProviderUnavailableError(
                    f"the provider call failed: {error.code().name}"
                ) from error
            except asyncio.CancelledError:
                # The caller went away (a client gone, a load generator stopping with calls
                # in flight): nothing is known about the provider, so no failure is counted;
                # a burst of cancellations must not open the circuit for everyone else.
                self.breaker.abandoned(trial)
                raise
            except BaseException:
                self.breaker.failed()
                raise
        self.breaker.succeeded()
        return answer(reply)

    async def _with_retries(self, call: ChatCall) -> provider_pb2.ChatResponse:
        # A plain loop, not tenacity: its retry state, attempt and wait objects cost more per
        # call than the rest of this adapter, on every call, though most calls succeed at once.
        request = provider_pb2.ChatRequest(provider=call.provider, prompt=call.prompt)
        r = self._r
        retry = 1
        while True:
            try:
                return await self._chat(request, r.timeout_seconds, call.credential)
            except grpc.aio.AioRpcError as error:
                if retry >= r.attempts or not _retryable(error):
                    raise
            high = min(r.backoff_max_seconds, r.backoff_seconds * 2 ** (retry - 1))
            await self._sleep(random.uniform(0, high))  # noqa: S311 (jitter, not a secret)
            retry += 1


def answer(reply: provider_pb2.ChatResponse) -> dict[str, object]:
    """The reply as proto3 JSON, as json_format.MessageToDict gives it (unset fields left
    out, int64 as strings, camelCase names), built field by field: MessageToDict's generic
    walk cost about as much as the rest of a Consume's provider call."""
    out: dict[str, object] = {}
    if reply.id:
        out["id"] = reply.id
    if reply.provider:
        out["provider"] = reply.provider
    if reply.HasField("received"):
        out["received"] = _struct(reply.received)
    if reply.HasField("created"):
        out["created"] = reply.created.ToJsonString()
    if reply.message:
        out["message"] = reply.message
    if reply.HasField("usage"):
        u = reply.usage
        usage = {}
        if u.prompt_tokens:
            usage["promptTokens"] = str(u.prompt_tokens)
        if u.completion_tokens:
            usage["completionTokens"] = str(u.completion_tokens)
        if u.total_tokens:
            usage["totalTokens"] = str(u.total_tokens)
        out["usage"] = usage
    return out


def _struct(s: struct_pb2.Struct) -> dict[str, object]:
    return {k: _value(v) for k, v in s.fields.items()}


def _value(v: struct_pb2.Value) -> object:
    kind = v.WhichOneof("kind")
    if kind == "struct_value":
        return _struct(v.struct_value)
    if kind == "list_value":
        return [_value(x) for x in v.list_value.values]
    if kind == "number_value":
        if not math.isfinite(v.number_value):  # JSON has no such number (as MessageToDict)
            raise ValueError("the provider answered a number JSON cannot carry")
        return v.number_value
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    return None
