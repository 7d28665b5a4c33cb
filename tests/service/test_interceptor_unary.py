"""The interceptor on unary RPCs: where the request id and headers go, auth, cancellation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from leaky_tokens.runtime.identity import caller_var
from leaky_tokens.runtime.jwt_verifier import JwtVerifier
from leaky_tokens.runtime.response_headers import add_response_headers
from leaky_tokens.runtime.server import RunningServer, ServerSettings, ServiceSpec, start_server
from tests.support.jwks import KeySet, bearer
from tests.support.wait import eventually

SERVICE = "leaky.test.v1.Unary"
PUBLIC = frozenset({f"/{SERVICE}/Plain", f"/{SERVICE}/Headers", f"/{SERVICE}/Late"})


@dataclass
class Handlers:
    """The test servicer; `late_waiting` is set once Late waits to be cancelled."""

    late_waiting: asyncio.Event
    late_done: asyncio.Event

    async def plain(self, request: bytes, context: Any) -> bytes:
        caller = caller_var.get()
        return b"anonymous" if caller is None else caller.user_id.encode()

    async def headers(self, request: bytes, context: Any) -> bytes:
        add_response_headers({"x-ratelimit-limit": "10", "retry-after": "3"})
        return b"ok"

    async def trailers(self, request: bytes, context: Any) -> bytes:
        context.set_trailing_metadata((("x-own", "kept"),))
        return b"ok"

    async def late(self, request: bytes, context: Any) -> bytes:
        """Adds headers, then outlives the client's cancel (work that must finish)."""
        add_response_headers({"x-ratelimit-limit": "10"})
        self.late_waiting.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # e.g. a debit that must complete once started
        finally:
            self.late_done.set()
        return b"too late"

    async def crash(self, request: bytes, context: Any) -> bytes:
        raise RuntimeError("secret internals")

    def register(self, server: grpc.aio.Server) -> None:
        handlers = {
            "Plain": grpc.unary_unary_rpc_method_handler(self.plain),
            "Headers": grpc.unary_unary_rpc_method_handler(self.headers),
            "Trailers": grpc.unary_unary_rpc_method_handler(self.trailers),
            "Late": grpc.unary_unary_rpc_method_handler(self.late),
            "Crash": grpc.unary_unary_rpc_method_handler(self.crash),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


@dataclass
class Served:
    running: RunningServer
    channel: grpc.aio.Channel
    keys: KeySet
    handlers: Handlers

    def call(self, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        return self.channel.unary_unary(f"/{SERVICE}/{method}", _raw, _raw)

    def handled(self, method: str, code: str) -> float:
        value = self.running.metrics.get_sample_value(
            "leaky_unary_grpc_server_handled_total",
            {"method": f"/{SERVICE}/{method}", "code": code},
        )
        return value or 0.0


def _raw(data: bytes) -> bytes:
    return data


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    keys = KeySet()
    verifier = JwtVerifier(keys.fetch, issuer="iss", audience="aud")
    handlers = Handlers(asyncio.Event(), asyncio.Event())
    spec = ServiceSpec("unary", (), handlers.register, public_methods=PUBLIC)
    running = await start_server(spec, ServerSettings(port=0), verifier)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield Served(running, channel, keys, handlers)
    await running.stop(0)


def _metadata(pairs: Any) -> dict[str, str]:
    return {key: str(value) for key, value in pairs or ()}


async def test_an_answer_without_headers_carries_the_request_id_in_its_trailers(
    served: Served,
) -> None:
    call = served.call("Plain")(b"", metadata=(("x-request-id", "r-1"),))
    assert await call == b"anonymous"
    assert _metadata(await call.trailing_metadata())["x-request-id"] == "r-1"
    # No initial metadata of our own: the answer goes out in one batch with the status.
    assert "x-request-id" not in _metadata(await call.initial_metadata())
    generated = served.call("Plain")(b"")
    await generated
    assert len(_metadata(await generated.trailing_metadata())["x-request-id"]) == 32
    assert served.handled("Plain", "OK") == 2


async def test_headers_a_handler_adds_go_out_as_initial_metadata_with_the_request_id(
    served: Served,
) -> None:
    call = served.call("Headers")(b"", metadata=(("x-request-id", "r-2"),))
    assert await call == b"ok"
    sent = _metadata(await call.initial_metadata())
    assert sent == {"x-request-id": "r-2", "x-ratelimit-limit": "10", "retry-after": "3"}
    assert _metadata(await call.trailing_metadata())["x-request-id"] == "r-2"


async def test_trailers_the_handler_set_are_kept_beside_the_request_id(served: Served) -> None:
    call = served.call("Trailers")(b"", metadata=(*bearer(served.keys.token()),))
    await call
    trailers = _metadata(await call.trailing_metadata())
    assert trailers["x-own"] == "kept"
    assert trailers["x-request-id"]


async def test_public_methods_take_anonymous_malformed_and_valid_credentials(
    served: Served,
) -> None:
    assert await served.call("Plain")(b"") == b"anonymous"
    malformed = (("authorization", "Basic dXNlcjpwdw=="),)
    assert await served.call("Plain")(b"", metadata=malformed) == b"anonymous"
    assert await served.call("Plain")(b"", metadata=bearer(served.keys.token())) == b"user-1"
    assert served.handled("Plain", "OK") == 3


async def test_protected_methods_refuse_a_call_without_a_token(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await served.call("Trailers")(b"", metadata=(("x-request-id", "r-3"),))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _metadata(info.value.trailing_metadata())["x-request-id"] == "r-3"
    assert served.handled("Trailers", "UNAUTHENTICATED") == 1


async def test_a_bug_is_internal_with_the_request_id_and_logged(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await served.call("Crash")(
            b"", metadata=(*bearer(served.keys.token()), ("x-request-id", "r-4"))
        )
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "internal error (request id r-4)"
    assert "secret" not in str(info.value.debug_error_string())
    assert served.handled("Crash", "INTERNAL") == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        f"unhandled error in /{SERVICE}/Crash"
    ]


async def test_a_client_gone_before_the_headers_went_out_is_cancelled_not_an_error(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    call = served.call("Late")(b"")
    await served.handlers.late_waiting.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await served.handlers.late_done.wait()

    # The server side ends on its own, shortly after the handler returned.
    await eventually(lambda: served.handled("Late", "CANCELLED") == 1, 10, what="CANCELLED")
    assert served.handled("Late", "INTERNAL") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
