"""ChatProvider over gRPC (leaky.provider.v1): timeout, retries, circuit breaker, bulkhead."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf import json_format
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from leaky.provider.v1 import provider_pb2, provider_pb2_grpc
from leaky_tokens.token.adapters.circuit_breaker import CircuitBreaker
from leaky_tokens.token.domain.peers import ChatCall, ProviderUnavailableError

# Only these mean "the call may not have reached a working provider": anything else
# (a refused credential, a bad argument) would fail the same way again.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


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
        self._stub = provider_pb2_grpc.ProviderServiceStub(channel)

    async def __call__(
        self, request: provider_pb2.ChatRequest, deadline: float, credential: str
    ) -> provider_pb2.ChatResponse:
        metadata = (("authorization", f"Bearer {credential}"),) if credential else ()
        return await self._stub.Chat(request, timeout=deadline, metadata=metadata)


Chat = Callable[[provider_pb2.ChatRequest, float, str], Awaitable[provider_pb2.ChatResponse]]


def _retryable(error: BaseException) -> bool:
    return isinstance(error, grpc.aio.AioRpcError) and error.code() in RETRYABLE


class GrpcChatProvider:
    """Calls the provider service with the caller's credential.

    Each attempt has `timeout_seconds`; UNAVAILABLE and DEADLINE_EXCEEDED are retried with
    full-jitter exponential backoff (tenacity); `breaker_failures` failed calls in a row open
    the circuit for `breaker_reset_seconds` (then one trial call); at most `max_concurrent`
    calls are in flight, more are refused at once rather than queued (a bulkhead: a slow
    provider must not pile up every request the token service holds).
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
        channel = grpc.aio.insecure_channel(target)

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
            except BaseException:
                self.breaker.failed()
                raise
        self.breaker.succeeded()
        return json_format.MessageToDict(reply)

    async def _with_retries(self, call: ChatCall) -> provider_pb2.ChatResponse:
        request = provider_pb2.ChatRequest(provider=call.provider, prompt=call.prompt)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._r.attempts),
            wait=wait_random_exponential(
                multiplier=self._r.backoff_seconds, max=self._r.backoff_max_seconds
            ),
            retry=retry_if_exception(_retryable),
            sleep=self._sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._chat(request, self._r.timeout_seconds, call.credential)
        raise AssertionError("unreachable: tenacity reraises the last error")
