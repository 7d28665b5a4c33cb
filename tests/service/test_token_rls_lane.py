"""ShouldRateLimit's own lane (ADR 0034): what the interceptor did for it still holds."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2 as pb
from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2_grpc
from leaky_tokens.runtime.jwt_verifier import JwtVerifier
from leaky_tokens.runtime.server import RunningServer, ServerSettings, ServiceSpec, start_server
from leaky_tokens.token.adapters.in_memory_rate_counter import InMemoryRequestCounter
from leaky_tokens.token.adapters.settings import TokenStoreSettings
from leaky_tokens.token.domain.ports import StoreUnavailableError
from leaky_tokens.token.domain.rate_counter import CounterHit, CountStep
from leaky_tokens.token.rls_servicer import SHOULD_RATE_LIMIT
from leaky_tokens.token.rls_wiring import (
    RLS_PUBLIC_METHODS,
    RLS_SERVICE_NAME,
    RlsSettings,
    build_rls,
    rls_config_file,
)
from tests.support.fakes import FakeClock
from tests.support.jwks import KeySet

R = pb.RateLimitResponse
RULES = """\
domain: leaky
descriptors:
  - key: user_id
    rate_limit: {unit: minute, requests_per_unit: 2}
"""


class BrokenCounter:
    """A request counter failing with `error` on every hit."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def hit(self, hits: Sequence[CounterHit], now_ms: int) -> CountStep:
        raise self.error

    async def close(self) -> None:
        return None


@dataclass
class Served:
    stub: rls_pb2_grpc.RateLimitServiceAsyncStub
    server: RunningServer
    channel: grpc.aio.Channel

    def handled(self, code: str) -> float:
        labels = {"method": SHOULD_RATE_LIMIT, "code": code}
        found = self.server.metrics.get_sample_value(
            "leaky_token_grpc_server_handled_total", labels
        )
        return found or 0.0


@asynccontextmanager
async def serve(
    tmp_path: Any,
    counter: Any = None,
    *,
    public: bool = True,
    max_message_bytes: int = 4 * 1024 * 1024,
) -> AsyncIterator[Served]:
    config = tmp_path / "rules.yaml"
    config.write_text(RULES)
    wiring = build_rls(
        RlsSettings(rls_config=str(config)),
        TokenStoreSettings(),
        FakeClock(),
        config_file=_watched(config),
        counter=counter or InMemoryRequestCounter(),
    )
    spec = ServiceSpec(
        "token",
        (RLS_SERVICE_NAME,),
        wiring.register,
        RLS_PUBLIC_METHODS if public else frozenset(),
    )
    settings = ServerSettings(port=0, metrics_port=0, max_message_bytes=max_message_bytes)
    keys = KeySet("leaky-tokens-auth", "leaky-tokens")
    verifier = JwtVerifier(keys.fetch, issuer="leaky-tokens-auth", audience="leaky-tokens")
    server = await start_server(spec, settings, verifier)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Served(rls_pb2_grpc.RateLimitServiceStub(channel), server, channel)
    finally:
        await server.stop(0)
        await wiring.close()


def _watched(path: Any) -> Any:
    return rls_config_file(RlsSettings(rls_config=str(path)))


def request(value: str = "u1") -> pb.RateLimitRequest:
    req = pb.RateLimitRequest(domain="leaky")
    req.descriptors.add().entries.add(key="user_id", value=value)
    return req


def violations(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details)
    return [v.field for v in bad.field_violations]


def trailer(error: grpc.aio.AioRpcError, key: str) -> str | None:
    metadata: Any = error.trailing_metadata() or ()  # grpc-stubs types it loosely
    return next((str(v) for k, v in metadata if k == key), None)


async def test_decisions_are_answered_and_counted_as_ok(tmp_path: Any) -> None:
    async with serve(tmp_path) as s:
        codes = [(await s.stub.ShouldRateLimit(request())).overall_code for _ in range(3)]
        assert codes == [R.OK, R.OK, R.OVER_LIMIT]
        assert s.handled("OK") == 3
        latency = s.server.metrics.get_sample_value(
            "leaky_token_grpc_server_handling_seconds_count", {"method": SHOULD_RATE_LIMIT}
        )
        assert latency == 3


async def test_a_bad_request_is_invalid_argument_with_field_details_and_the_request_id(
    tmp_path: Any,
) -> None:
    async with serve(tmp_path) as s:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await s.stub.ShouldRateLimit(
                pb.RateLimitRequest(domain="leaky"), metadata=(("x-request-id", "req-7"),)
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(caught.value) == ["descriptors"]
        assert trailer(caught.value, "x-request-id") == "req-7"
        assert s.handled("INVALID_ARGUMENT") == 1


async def test_garbled_and_oversized_requests_are_invalid_argument_on_request(
    tmp_path: Any,
) -> None:
    async with serve(tmp_path, max_message_bytes=64) as s:
        call = s.channel.unary_unary(  # bytes as they are
            SHOULD_RATE_LIMIT, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        with pytest.raises(grpc.aio.AioRpcError) as garbled:
            await call(b"\xff\xff\xff")
        assert garbled.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(garbled.value) == ["request"]
        with pytest.raises(grpc.aio.AioRpcError) as big:
            await s.stub.ShouldRateLimit(request("u" * 100))
        assert big.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(big.value) == ["request"]
        assert "limit is 64" in (big.value.details() or "")
        assert s.handled("INVALID_ARGUMENT") == 2


async def test_an_unreachable_store_is_unavailable(tmp_path: Any) -> None:
    async with serve(tmp_path, BrokenCounter(StoreUnavailableError("redis: down"))) as s:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await s.stub.ShouldRateLimit(request())
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert trailer(caught.value, "x-request-id")  # a fresh one: the caller sent none
        assert s.handled("UNAVAILABLE") == 1


async def test_an_unexpected_error_is_logged_and_internal_with_the_request_id(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(tmp_path, BrokenCounter(RuntimeError("a bug"))) as s:
        with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AioRpcError) as caught:
            await s.stub.ShouldRateLimit(request(), metadata=(("x-request-id", "req-9"),))
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert "a bug" not in (caught.value.details() or "")  # no internals to the caller
        assert "req-9" in (caught.value.details() or "")
        assert trailer(caught.value, "x-request-id") == "req-9"
        logged = [r for r in caplog.records if r.getMessage().startswith("unhandled error")]
        assert len(logged) == 1
        assert logged[0].exc_info is not None
        assert SHOULD_RATE_LIMIT in logged[0].getMessage()
        assert s.handled("INTERNAL") == 1


async def test_the_lane_on_a_protected_method_is_authenticated_like_any_other(
    tmp_path: Any,
) -> None:
    async with serve(tmp_path, public=False) as s:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await s.stub.ShouldRateLimit(request())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_server_without_our_interceptor_still_serves_the_lane(tmp_path: Any) -> None:
    config = tmp_path / "rules.yaml"
    config.write_text(RULES)
    wiring = build_rls(
        RlsSettings(rls_config=str(config)),
        TokenStoreSettings(),
        FakeClock(),
        config_file=_watched(config),
    )
    server = grpc.aio.server()
    wiring.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            assert (await stub.ShouldRateLimit(request())).overall_code == R.OK
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ShouldRateLimit(pb.RateLimitRequest(domain="leaky"))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await server.stop(0)
        await wiring.close()
