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


class LeakyServerInterceptor(_Interceptor):
    """Wraps every handler, whatever its shape, in the same checks.

    Unary and streaming RPCs alike get a request id, authentication (unless public), the
    input limit on every request message, error mapping and metrics. A method the servicer
    inherits unchanged from the generated base answers UNIMPLEMENTED, saying why.
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
        make, wrapped = {
            (False, False): (grpc.unary_unary_rpc_method_handler, self._unary_unary),
            (False, True): (grpc.unary_stream_rpc_method_handler, self._unary_stream),
            (True, False): (grpc.stream_unary_rpc_method_handler, self._stream_unary),
            (True, True): (grpc.stream_stream_rpc_method_handler, self._stream_stream),
        }[(handler.request_streaming, handler.response_streaming)]
        return make(
            wrapped(method, behavior),
            request_deserializer=deserializer,
            response_serializer=serializer,
        )

    def _unimplemented(self, method: str) -> Behavior:
        message = f"{method.lstrip('/')} is not implemented yet: {self._pending}"

        async def behavior(request: Any, context: Context) -> NoReturn:
            raise UnimplementedError(message)

        return behavior

    def _unary_unary(self, method: str, behavior: Behavior) -> Behavior:
        async def handle(request: Any, context: Context) -> Any:
            async with self._rpc(method, context):
                if isinstance(request, _Rejected):
                    raise request.error()
                await self._authenticate(method, context)
                return await behavior(request, context)

        return handle

    def _unary_stream(self, method: str, behavior: Behavior) -> Behavior:
        async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
            async with self._rpc(method, context, streaming=True):
                if isinstance(request, _Rejected):
                    raise request.error()
                await self._authenticate(method, context)
                responses = _responses(behavior(request, context))
                async with contextlib.aclosing(responses):
                    async for response in responses:
                        yield response

        return handle

    def _stream_unary(self, method: str, behavior: Behavior) -> Behavior:
        async def handle(requests: Any, context: Context) -> Any:
            async with self._rpc(method, context):
                await self._authenticate(method, context)
                return await behavior(_checked(requests), context)

        return handle

    def _stream_stream(self, method: str, behavior: Behavior) -> Behavior:
        async def handle(requests: Any, context: Context) -> AsyncIterator[Any]:
            async with self._rpc(method, context, streaming=True):
                await self._authenticate(method, context)
                responses = _responses(behavior(_checked(requests), context))
                async with contextlib.aclosing(responses):
                    async for response in responses:
                        yield response

        return handle

    @contextlib.asynccontextmanager
    async def _rpc(
        self, method: str, context: Context, *, streaming: bool = False
    ) -> AsyncIterator[None]:
        """Request id, timing, metrics and the one mapping of errors to status.

        A unary call sends its request id (and the headers its handler added,
        runtime/response_headers.py) as initial metadata only once it succeeded: an error
        then goes out trailers-only, which Envoy's transcoder turns into HTTP headers
        (retry-after, x-request-id). A stream must send it first, before any message.
        """
        request_id = _request_id(context)
        request_id_var.set(request_id)
        extra: dict[str, str] = {}
        response_headers_var.set(extra)
        if streaming:
            await context.send_initial_metadata((("x-request-id", request_id),))
        started = time.perf_counter()
        code: grpc.StatusCode | None = grpc.StatusCode.OK
        try:
            yield
            if not streaming:
                await context.send_initial_metadata((("x-request-id", request_id), *extra.items()))
        except DomainError as error:
            grpc_status = status.to_status(error)
            code = grpc_status.code
            await _abort(context, grpc_status, request_id)
        except grpc.aio.AbortError:
            code = context.code() or code
            raise
        except (asyncio.CancelledError, GeneratorExit):  # the client went away
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            if context.cancelled():  # the client went away mid-call (e.g. a load generator)
                code = grpc.StatusCode.CANCELLED
                return
            code = grpc.StatusCode.INTERNAL
            log.exception("unhandled error in %s", method)
            await _abort(context, status.internal(request_id), request_id)
        finally:
            self._metrics.handled.labels(method, code.name if code else "UNKNOWN").inc()
            self._metrics.latency.labels(method).observe(time.perf_counter() - started)

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

    async def _authenticate(self, method: str, context: Context) -> None:
        caller_var.set(None)
        try:
            token = bearer_token(context.invocation_metadata())  # type: ignore[arg-type]
            if token is None or self._verifier is None:
                raise_unauthenticated()
            caller_var.set(await self._verifier.verify(token))
        except (UnauthenticatedError, UnavailableError):
            # Public RPCs ignore missing or stale credentials (a client that always sends its
            # expired token must still be able to log in), and keys that cannot be fetched
            # (a status probe must answer while auth is down); protected ones refuse them.
            if method not in self._public:
                raise


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


async def _abort(context: Context, rpc_status: grpc.Status, request_id: str) -> None:
    """End the call with `rpc_status`, its trailers carrying the request id too."""
    trailers = (*rpc_status.trailing_metadata, ("x-request-id", request_id))
    await context.abort(rpc_status.code, rpc_status.details, trailers)


def _request_id(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex
