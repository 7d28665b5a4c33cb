"""Server interceptor: request id, authentication, error mapping, input limits and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, cast

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry, Counter, Histogram

from leaky_tokens.runtime import status
from leaky_tokens.runtime.errors import (
    DomainError,
    FieldViolation,
    InvalidArgumentError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from leaky_tokens.runtime.identity import caller_var
from leaky_tokens.runtime.jwt_verifier import JwtVerifier, bearer_token
from leaky_tokens.runtime.logging import request_id_var
from leaky_tokens.runtime.response_headers import response_headers_var

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
# One signature for all four shapes: the first argument is a request or a request iterator,
# the result a response, an async iterator of responses, or None (reader/writer handlers).
Behavior = Callable[[Any, Context], Any]


if TYPE_CHECKING:  # grpc-stubs makes it generic; grpcio's class is not subscriptable
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


class _Rejected:
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


class _MethodMetrics:
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


class LeakyServerInterceptor(_Interceptor):
    """Wraps every handler, whatever its shape, in the same checks.

    Unary and streaming RPCs alike get a request id, authentication (unless public), the
    input limit on every request message, error mapping and metrics. A method the servicer
    inherits unchanged from the generated base answers UNIMPLEMENTED, saying why.

    The request id goes out in the trailing metadata of every call (batched with the status,
    no extra trip through gRPC core); a unary answer sends initial metadata (the id again and
    the HTTP headers its handler added, runtime/response_headers.py) only when there are such
    headers, and a stream sends the id as initial metadata before its first message.
    """

    def __init__(
        self,
        *,
        verifier: JwtVerifier | None,
        public_methods: frozenset[str],
        metrics: ServerMetrics,
        max_message_bytes: int,
        unimplemented_reason: str = "it has not been written yet",
    ) -> None:
        self._verifier = verifier
        self._public = public_methods
        self._metrics = metrics
        self._max = max_message_bytes
        self._pending = unimplemented_reason
        # grpc.aio runs the interceptors on every call: wrap each handler once, keyed by
        # method and checked by identity (a generic handler may hand out a new one).
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        # grpc-stubs types handlers as sync; on an aio server they are coroutines/generators.
        behavior = cast(
            Behavior,
            handler.unary_unary
            or handler.unary_stream
            or handler.stream_unary
            or handler.stream_stream,
        )
        if _is_generated_stub(behavior):
            behavior = self._unimplemented(method)
        deserializer = self._safe_deserializer(handler.request_deserializer)
        serializer = handler.response_serializer
        make, wrap = {
            (False, False): (grpc.unary_unary_rpc_method_handler, self._unary_unary),
            (False, True): (grpc.unary_stream_rpc_method_handler, self._unary_stream),
            (True, False): (grpc.stream_unary_rpc_method_handler, self._stream_unary),
            (True, True): (grpc.stream_stream_rpc_method_handler, self._stream_stream),
        }[(handler.request_streaming, handler.response_streaming)]
        call = _Method(method, method in self._public, _MethodMetrics(self._metrics, method))
        return make(
            wrap(call, behavior),
            request_deserializer=deserializer,
            response_serializer=serializer,
        )

    def _unimplemented(self, method: str) -> Behavior:
        message = f"{method.lstrip('/')} is not implemented yet: {self._pending}"

        async def behavior(request: Any, context: Context) -> NoReturn:
            raise UnimplementedError(message)

        return behavior

    def _unary_unary(self, call: _Method, behavior: Behavior) -> Behavior:
        metrics = call.metrics

        async def handle(request: Any, context: Context) -> Any:
            # Plain try/except, not a context manager: this runs on every call.
            started = time.perf_counter()
            metadata = context.invocation_metadata()
            request_id = _request_id(metadata)
            request_id_var.set(request_id)
            headers: dict[str, str] = {}
            response_headers_var.set(headers)
            try:
                if isinstance(request, _Rejected):
                    raise request.error()
                await self._authenticate(call.public, metadata)
                response = await behavior(request, context)
                if headers:
                    await _send_headers(context, request_id, headers)
                _trail(context, request_id)
            except Exception as error:  # mapped to a status, never lost
                await self._fail(call, error, context, request_id)
            except BaseException:  # CancelledError: the client went away
                metrics.count(grpc.StatusCode.CANCELLED)
                raise
            else:
                metrics.ok.inc()
                return response
            finally:
                metrics.latency.observe(time.perf_counter() - started)

        return handle

    def _unary_stream(self, call: _Method, behavior: Behavior) -> Behavior:
        async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            metadata = context.invocation_metadata()
            request_id = await self._open_stream(context, metadata)
            try:
                if isinstance(request, _Rejected):
                    raise request.error()
                await self._authenticate(call.public, metadata)
                responses = _responses(behavior(request, context))
                async with contextlib.aclosing(responses):
                    async for response in responses:
                        yield response
                _trail(context, request_id)
            except Exception as error:  # mapped to a status, never lost
                await self._fail(call, error, context, request_id)
            except BaseException:  # CancelledError or GeneratorExit: the client went away
                call.metrics.count(grpc.StatusCode.CANCELLED)
                raise
            else:
                call.metrics.ok.inc()
            finally:
                call.metrics.latency.observe(time.perf_counter() - started)

        return handle

    def _stream_unary(self, call: _Method, behavior: Behavior) -> Behavior:
        async def handle(requests: Any, context: Context) -> Any:
            started = time.perf_counter()
            metadata = context.invocation_metadata()
            request_id = await self._open_stream(context, metadata)
            try:
                await self._authenticate(call.public, metadata)
                response = await behavior(_checked(requests), context)
                _trail(context, request_id)
            except Exception as error:  # mapped to a status, never lost
                await self._fail(call, error, context, request_id)
            except BaseException:
                call.metrics.count(grpc.StatusCode.CANCELLED)
                raise
            else:
                call.metrics.ok.inc()
                return response
            finally:
                call.metrics.latency.observe(time.perf_counter() - started)

        return handle

    def _stream_stream(self, call: _Method, behavior: Behavior) -> Behavior:
        async def handle(requests: Any, context: Context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            metadata = context.invocation_metadata()
            request_id = await self._open_stream(context, metadata)
            try:
                await self._authenticate(call.public, metadata)
                responses = _responses(behavior(_checked(requests), context))
                async with contextlib.aclosing(responses):
                    async for response in responses:
                        yield response
                _trail(context, request_id)
            except Exception as error:  # mapped to a status, never lost
                await self._fail(call, error, context, request_id)
            except BaseException:
                call.metrics.count(grpc.StatusCode.CANCELLED)
                raise
            else:
                call.metrics.ok.inc()
            finally:
                call.metrics.latency.observe(time.perf_counter() - started)

        return handle

    @staticmethod
    async def _open_stream(context: Context, metadata: Any) -> str:
        """A stream's request id, sent first: initial metadata must precede its messages."""
        request_id = _request_id(metadata)
        request_id_var.set(request_id)
        response_headers_var.set({})  # a stream's headers are its first metadata: none extra
        await context.send_initial_metadata((("x-request-id", request_id),))
        return request_id

    async def _fail(
        self, call: _Method, error: Exception, context: Context, request_id: str
    ) -> NoReturn:
        """Count a failed call and end it with its status (the one mapping of errors).

        Raises grpc.aio.AbortError as context.abort does, or CancelledError when the client
        has gone (no one to answer, nothing worth an ERROR line; grpc.aio ends it quietly).
        """
        if isinstance(error, DomainError):
            grpc_status = status.to_status(error)
            call.metrics.count(grpc_status.code)
            await _abort(context, grpc_status, request_id)
        if isinstance(error, grpc.aio.AbortError):  # the handler called context.abort
            call.metrics.count(context.code() or grpc.StatusCode.UNKNOWN)
            raise error
        if context.cancelled():  # the client went away mid-call (e.g. a load generator)
            call.metrics.count(grpc.StatusCode.CANCELLED)
            raise asyncio.CancelledError("the client went away") from error
        call.metrics.count(grpc.StatusCode.INTERNAL)
        log.error("unhandled error in %s", call.name, exc_info=error)
        await _abort(context, status.internal(request_id), request_id)

    def _safe_deserializer(self, inner: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
        limit = self._max

        def deserialize(data: bytes) -> Any:
            if len(data) > limit:
                return _Rejected(f"request is {len(data)} bytes; the limit is {limit}")
            try:
                return inner(data) if inner else data
            except DecodeError:
                return _Rejected("request is not a valid protobuf message")

        return deserialize

    async def _authenticate(self, public: bool, metadata: Any) -> None:
        """Verify the caller's token into caller_var; a public RPC goes on without one.

        Each RPC runs in its own task whose context is copied from the server's, where no
        caller is ever set, so an anonymous call needs no caller_var.set(None).
        """
        try:
            token = bearer_token(metadata)
            if token is None or self._verifier is None:
                if public:  # the common case of a probe or public RPC: no error built
                    return
                raise_unauthenticated()
            caller_var.set(await self._verifier.verify(token))
        except (UnauthenticatedError, UnavailableError):
            # Public RPCs ignore malformed or stale credentials (a client that always sends
            # its expired token must still be able to log in), and keys that cannot be
            # fetched (a status probe must answer while auth is down); protected ones refuse.
            if not public:
                raise


class _Method:
    """What a wrapped handler knows of its method, computed once."""

    __slots__ = ("metrics", "name", "public")

    def __init__(self, name: str, public: bool, metrics: _MethodMetrics) -> None:
        self.name = name
        self.public = public
        self.metrics = metrics


def raise_unauthenticated() -> NoReturn:
    """Raise the standard error for a protected RPC called without credentials."""
    raise UnauthenticatedError(
        "authentication required: send 'authorization: Bearer <token>'",
        reason="MISSING_CREDENTIALS",
    )


def _is_generated_stub(behavior: Behavior) -> bool:
    # The generated *Servicer base answers "Method not implemented!" from a module named
    # *_pb2_grpc; a servicer that did not override the method hands us that function.
    function = getattr(behavior, "__func__", behavior)
    return str(getattr(function, "__module__", "")).endswith("_pb2_grpc")


async def _checked(requests: Any) -> AsyncIterator[Any]:
    """The request stream, refusing (INVALID_ARGUMENT) a message over the limit or garbled."""
    async for request in requests:
        if isinstance(request, _Rejected):
            raise request.error()
        yield request


async def _responses(result: Any) -> AsyncGenerator[Any, None]:
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


async def _abort(context: Context, rpc_status: grpc.Status, request_id: str) -> NoReturn:
    """End the call with `rpc_status`, its trailers carrying the request id too."""
    trailers = (*rpc_status.trailing_metadata, ("x-request-id", request_id))
    await context.abort(rpc_status.code, rpc_status.details, trailers)


async def _send_headers(context: Context, request_id: str, headers: dict[str, str]) -> None:
    """Send a unary answer's initial metadata; CancelledError when the client has gone.

    The batch fails (grpc.aio.InternalError, gRPC core's ExecuteBatchError) when the call was
    cancelled before it went out, e.g. a load generator stopping mid-call: no bug to log, no
    one to answer; grpc.aio ends a call whose handler raised CancelledError quietly.
    """
    try:
        await context.send_initial_metadata((("x-request-id", request_id), *headers.items()))
    except grpc.aio.InternalError as error:
        raise asyncio.CancelledError("the client went away") from error


def _trail(context: Context, request_id: str) -> None:
    """Put the request id in the trailing metadata, after any the handler set."""
    handler_set = context.trailing_metadata()
    context.set_trailing_metadata((*(handler_set or ()), ("x-request-id", request_id)))


def _request_id(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex
