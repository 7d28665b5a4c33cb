"""The interceptor guards streaming RPCs like unary ones; probes and reflection stay public."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from leaky_tokens.runtime.errors import NotFoundError
from leaky_tokens.runtime.identity import current_caller
from leaky_tokens.runtime.jwt_verifier import JwtVerifier
from leaky_tokens.runtime.server import RunningServer, ServerSettings, ServiceSpec, start_server
from tests.support.grpc_errors import reason
from tests.support.jwks import KeySet, bearer

SERVICE = "leaky.test.v1.Streams"


async def count(request: bytes, context: object) -> AsyncIterator[bytes]:
    """Server streaming: one message per byte; b"!" fails after the first message."""
    for n, char in enumerate(request):
        if char == ord("!"):
            raise NotFoundError("no such thing mid-stream", reason="GONE_MID_STREAM")
        yield f"{n}:{current_caller().user_id}".encode()


async def collect(requests: AsyncIterator[bytes], context: object) -> bytes:
    """Client streaming: the messages joined."""
    return b"".join([r async for r in requests])


async def echo(requests: AsyncIterator[bytes], context: object) -> AsyncIterator[bytes]:
    """Bidirectional: echoes each message; b"!" fails mid-stream."""
    async for request in requests:
        if request == b"!":
            raise NotFoundError("no such thing mid-stream", reason="GONE_MID_STREAM")
        yield request


async def crash(request: bytes, context: object) -> AsyncIterator[bytes]:
    """Server streaming that hits a bug after one message."""
    yield b"first"
    raise RuntimeError("secret internals")


def register(server: grpc.aio.Server) -> None:
    handlers: dict[str, Any] = {
        "Crash": grpc.unary_stream_rpc_method_handler(crash),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Collect": grpc.stream_unary_rpc_method_handler(collect),
        "Echo": grpc.stream_stream_rpc_method_handler(echo),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def _raw(data: bytes) -> bytes:
    return data


@dataclass
class Served:
    running: RunningServer
    channel: grpc.aio.Channel
    keys: KeySet

    def handled(self, method: str, code: str) -> float:
        value = self.running.metrics.get_sample_value(
            "leaky_streams_grpc_server_handled_total",
            {"method": f"/{SERVICE}/{method}", "code": code},
        )
        return value or 0.0

    def count(self) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
        return self.channel.unary_stream(f"/{SERVICE}/Count", _raw, _raw)

    def crash(self) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
        return self.channel.unary_stream(f"/{SERVICE}/Crash", _raw, _raw)

    def collect(self) -> grpc.aio.StreamUnaryMultiCallable[bytes, bytes]:
        return self.channel.stream_unary(f"/{SERVICE}/Collect", _raw, _raw)

    def echo(self) -> grpc.aio.StreamStreamMultiCallable[bytes, bytes]:
        return self.channel.stream_stream(f"/{SERVICE}/Echo", _raw, _raw)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    keys = KeySet()
    verifier = JwtVerifier(keys.fetch, issuer="iss", audience="aud")
    spec = ServiceSpec("streams", (), register)
    running = await start_server(spec, ServerSettings(port=0, max_message_bytes=64), verifier)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield Served(running, channel, keys)
    await running.stop(0)


async def test_server_streaming_without_credentials_is_unauthenticated(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        _ = [r async for r in served.count()(b"abc")]
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert served.handled("Count", "UNAUTHENTICATED") == 1


async def test_client_and_bidi_streaming_without_credentials_are_unauthenticated(
    served: Served,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as collected:
        await served.collect()(iter([b"a", b"b"]))
    assert collected.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as echoed:
        _ = [r async for r in served.echo()(iter([b"a"]))]
    assert echoed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert served.handled("Collect", "UNAUTHENTICATED") == 1
    assert served.handled("Echo", "UNAUTHENTICATED") == 1


async def test_streaming_with_a_valid_token_works_and_is_counted(served: Served) -> None:
    auth = bearer(served.keys.token())
    call = served.count()(b"abc", metadata=auth)
    assert [r async for r in call] == [b"0:user-1", b"1:user-1", b"2:user-1"]
    assert dict(await call.initial_metadata()).get("x-request-id")
    assert await served.collect()(iter([b"a", b"b"]), metadata=auth) == b"ab"
    assert [r async for r in served.echo()(iter([b"x", b"y"]), metadata=auth)] == [b"x", b"y"]
    assert served.handled("Count", "OK") == 1
    assert served.handled("Collect", "OK") == 1
    assert served.handled("Echo", "OK") == 1


async def _drain(call: AsyncIterable[bytes], into: list[bytes]) -> None:
    async for response in call:
        into.append(response)


async def test_domain_error_mid_stream_is_mapped_to_its_status(served: Served) -> None:
    auth = bearer(served.keys.token())
    received: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as counted:
        await _drain(served.count()(b"a!", metadata=auth), received)
    assert received == [b"0:user-1"]
    assert counted.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(counted.value) == "GONE_MID_STREAM"
    received.clear()
    with pytest.raises(grpc.aio.AioRpcError) as echoed:
        await _drain(served.echo()(iter([b"x", b"!", b"y"]), metadata=auth), received)
    assert received == [b"x"]
    assert echoed.value.code() == grpc.StatusCode.NOT_FOUND
    assert served.handled("Count", "NOT_FOUND") == 1
    assert served.handled("Echo", "NOT_FOUND") == 1


async def test_oversized_message_in_a_stream_is_invalid_argument(served: Served) -> None:
    auth = bearer(served.keys.token())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await served.collect()(iter([b"ok", b"x" * 65]), metadata=auth)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as unary_request:
        _ = [r async for r in served.count()(b"x" * 65, metadata=auth)]
    assert unary_request.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_watch_and_reflection_stay_public(served: Served) -> None:
    watch = health_pb2_grpc.HealthStub(served.channel).Watch(health_pb2.HealthCheckRequest())
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    reflect = reflection_pb2_grpc.ServerReflectionStub(served.channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = [s.name async for answer in reflect for s in answer.list_services_response.service]
    assert "grpc.health.v1.Health" in names
    assert served.handled("ServerReflectionInfo", "OK") == 0  # other service, other label
    reflection_calls = served.running.metrics.get_sample_value(
        "leaky_streams_grpc_server_handled_total",
        {"method": "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "code": "OK"},
    )
    assert reflection_calls == 1


async def test_bug_mid_stream_is_internal_with_the_request_id_and_no_internals(
    served: Served,
) -> None:
    call = served.crash()(b"", metadata=(*bearer(served.keys.token()), ("x-request-id", "r-7")))
    received: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _drain(call, received)
    assert received == [b"first"]
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "internal error (request id r-7)"
    assert reason(info.value) == "INTERNAL"
    assert served.handled("Crash", "INTERNAL") == 1
