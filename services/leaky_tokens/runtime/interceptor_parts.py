"""The interceptor's per-call parts: metrics, message checks, request id and metadata."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry, Counter, Histogram

from leaky_tokens.runtime.errors import FieldViolation, InvalidArgumentError

Context = grpc.aio.ServicerContext[Any, Any]


class Rejected:
    """Stands in for a request that could not be decoded, so the handler can answer 400."""

    def __init__(self, description: str) -> None:
        self.description = description

    def error(self) -> InvalidArgumentError:
        return InvalidArgumentError([FieldViolation("request", self.description)])


class ServerMetrics:
    """Prometheus metrics of one service: calls by method and code, latency by method."""

    def __init__(self, slug: str, registry: CollectorRegistry) -> None:
        slug = slug.replace("-", "_")  # a slug like "provider-x" is no valid metric name
        self.handled = Counter(
            f"leaky_{slug}_grpc_server_handled",
            "RPCs completed, by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            f"leaky_{slug}_grpc_server_handling_seconds",
            "RPC handling time in seconds (a stream's whole life), by method.",
            ["method"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )


class MethodMetrics:
    """One method's metric children, bound once when its handler is wrapped, not per call."""

    __slots__ = ("_codes", "_handled", "_method", "latency", "ok")

    def __init__(self, metrics: ServerMetrics, method: str) -> None:
        self._handled = metrics.handled
        self._method = method
        self.ok = metrics.handled.labels(method, "OK")
        self._codes = {"OK": self.ok}
        self.latency = metrics.latency.labels(method)

    def count(self, code: grpc.StatusCode | None) -> None:
        name = code.name if code is not None else "UNKNOWN"
        child = self._codes.get(name)
        if child is None:
            child = self._codes[name] = self._handled.labels(self._method, name)
        child.inc()


class OwnLane:
    """A unary-unary handler that does the interceptor's per-call work itself (ADR 0034).

    For an RPC hot enough that the generic wrapper's bookkeeping shows (ShouldRateLimit):
    `bind(metrics, max_message_bytes)` returns the handler the server runs, given the
    method's metric children and the input limit, and the interceptor returns it as is
    instead of wrapping it. The bound handler must keep the interceptor's contract: the
    input limit (INVALID_ARGUMENT), errors mapped by runtime/status.py with the request id
    in the trailers, an unexpected error logged and answered INTERNAL, every call counted
    and timed. Only public methods can take this lane: nothing here authenticates.
    Served without our interceptor (a bare server), it runs as bound to no metrics.
    """

    request_streaming = False
    response_streaming = False
    request_deserializer = None
    response_serializer = None
    unary_stream = None
    stream_unary = None
    stream_stream = None

    def __init__(self, bind: Callable[[MethodMetrics | None, int], Any], max_bytes: int) -> None:
        self.bind = bind
        self.unary_unary = bind(None, max_bytes).unary_unary


def safe_deserializer(inner: Callable[[bytes], Any] | None, limit: int) -> Callable[[bytes], Any]:
    """`inner`, answering a Rejected for a message over `limit` bytes or garbled (no raise:
    the handler then answers INVALID_ARGUMENT through the one error mapping)."""

    def deserialize(data: bytes) -> Any:
        if len(data) > limit:
            return Rejected(f"request is {len(data)} bytes; the limit is {limit}")
        try:
            return inner(data) if inner else data
        except DecodeError:
            return Rejected("request is not a valid protobuf message")

    return deserialize


def is_generated_stub(behavior: Callable[..., Any]) -> bool:
    # The generated *Servicer base answers "Method not implemented!" from a module named
    # *_pb2_grpc; a servicer that did not override the method hands us that function.
    function = getattr(behavior, "__func__", behavior)
    return str(getattr(function, "__module__", "")).endswith("_pb2_grpc")


async def checked(requests: Any) -> AsyncIterator[Any]:
    """The request stream, refusing (INVALID_ARGUMENT) a message over the limit or garbled."""
    async for request in requests:
        if isinstance(request, Rejected):
            raise request.error()
        yield request


async def responses(result: Any) -> AsyncGenerator[Any, None]:
    """Responses of a streaming handler: an async generator, or none when it wrote them."""
    if inspect.isawaitable(result):  # reader/writer API (context.write), e.g. health Watch
        await result
        return
    if hasattr(result, "aclose"):  # an async generator: close it if the client goes away
        async with contextlib.aclosing(result):
            async for response in result:
                yield response
        return
    for response in result or ():  # a plain generator
        yield response


async def abort(context: Context, rpc_status: grpc.Status, request_id: str) -> NoReturn:
    """End the call with `rpc_status`, its trailers carrying the request id too."""
    trailers = (*rpc_status.trailing_metadata, ("x-request-id", request_id))
    await context.abort(rpc_status.code, rpc_status.details, trailers)


async def send_headers(context: Context, request_id: str, headers: dict[str, str]) -> None:
    """Send a unary answer's initial metadata; CancelledError when the client has gone.

    The batch fails (grpc.aio.InternalError, gRPC core's ExecuteBatchError) when the call was
    cancelled before it went out, e.g. a load generator stopping mid-call: no bug to log, no
    one to answer; grpc.aio ends a call whose handler raised CancelledError quietly.
    """
    try:
        await context.send_initial_metadata((("x-request-id", request_id), *headers.items()))
    except grpc.aio.InternalError as error:
        raise asyncio.CancelledError("the client went away") from error


def trail(context: Context, request_id: str) -> None:
    """Put the request id in the trailing metadata, after any the handler set."""
    handler_set = context.trailing_metadata()
    context.set_trailing_metadata((*(handler_set or ()), ("x-request-id", request_id)))


def request_id_of(metadata: Any) -> str:
    """The caller's x-request-id when sane (1-128 chars), else a fresh one."""
    for key, value in metadata or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex
