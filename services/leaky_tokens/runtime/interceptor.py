"""Server interceptor: request id, authentication, error mapping, input limits and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, cast

import grpc

from leaky_tokens.runtime import status
from leaky_tokens.runtime.errors import (
    DomainError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from leaky_tokens.runtime.identity import caller_var
from leaky_tokens.runtime.interceptor_parts import (
    Context,
    MethodMetrics,
    OwnLane,
    Rejected,
    ServerMetrics,
    abort,
    checked,
    is_generated_stub,
    request_id_of,
    responses,
    safe_deserializer,
    send_headers,
    trail,
)
from leaky_tokens.runtime.jwt_verifier import JwtVerifier, bearer_token
from leaky_tokens.runtime.logging import request_id_var
from leaky_tokens.runtime.response_headers import response_headers_var

log = logging.getLogger(__name__)

__all__ = ["LeakyServerInterceptor", "ServerMetrics", "raise_unauthenticated"]

# One signature for all four shapes: the first argument is a request or a request iterator,
# the result a response, an async iterator of responses, or None (reader/writer handlers).
Behavior = Callable[[Any, Context], Any]


if TYPE_CHECKING:  # grpc-stubs makes it generic; grpcio's class is not subscriptable
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


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
        # A public OwnLane does the per-call work itself (ADR 0034); a protected one is
        # wrapped as any handler, so it is authenticated (it only loses the shortcut).
        if isinstance(handler, OwnLane) and method in self._public:
            bound: grpc.RpcMethodHandler[Any, Any] = handler.bind(
                MethodMetrics(self._metrics, method), self._max
            )
            return bound
        # grpc-stubs types handlers as sync; on an aio server they are coroutines/generators.
        behavior = cast(
            Behavior,
            handler.unary_unary
            or handler.unary_stream
            or handler.stream_unary
            or handler.stream_stream,
        )
        if is_generated_stub(behavior):
            behavior = self._unimplemented(method)
        deserializer = safe_deserializer(handler.request_deserializer, self._max)
        serializer = handler.response_serializer
        make, wrap = {
            (False, False): (grpc.unary_unary_rpc_method_handler, self._unary_unary),
            (False, True): (grpc.unary_stream_rpc_method_handler, self._unary_stream),
            (True, False): (grpc.stream_unary_rpc_method_handler, self._stream_unary),
            (True, True): (grpc.stream_stream_rpc_method_handler, self._stream_stream),
        }[(handler.request_streaming, handler.response_streaming)]
        call = _Method(method, method in self._public, MethodMetrics(self._metrics, method))
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
            request_id = request_id_of(metadata)
            request_id_var.set(request_id)
            headers: dict[str, str] = {}
            response_headers_var.set(headers)
            try:
                if isinstance(request, Rejected):
                    raise request.error()
                await self._authenticate(call.public, metadata)
                response = await behavior(request, context)
                if headers:
                    await send_headers(context, request_id, headers)
                trail(context, request_id)
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
                if isinstance(request, Rejected):
                    raise request.error()
                await self._authenticate(call.public, metadata)
                answers = responses(behavior(request, context))
                async with contextlib.aclosing(answers):
                    async for response in answers:
                        yield response
                trail(context, request_id)
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
                response = await behavior(checked(requests), context)
                trail(context, request_id)
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
                answers = responses(behavior(checked(requests), context))
                async with contextlib.aclosing(answers):
                    async for response in answers:
                        yield response
                trail(context, request_id)
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
        request_id = request_id_of(metadata)
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
            await abort(context, grpc_status, request_id)
        if isinstance(error, grpc.aio.AbortError):  # the handler called context.abort
            call.metrics.count(context.code() or grpc.StatusCode.UNKNOWN)
            raise error
        if context.cancelled():  # the client went away mid-call (e.g. a load generator)
            call.metrics.count(grpc.StatusCode.CANCELLED)
            raise asyncio.CancelledError("the client went away") from error
        call.metrics.count(grpc.StatusCode.INTERNAL)
        log.error("unhandled error in %s", call.name, exc_info=error)
        await abort(context, status.internal(request_id), request_id)

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

    def __init__(self, name: str, public: bool, metrics: MethodMetrics) -> None:
        self.name = name
        self.public = public
        self.metrics = metrics


def raise_unauthenticated() -> NoReturn:
    """Raise the standard error for a protected RPC called without credentials."""
    raise UnauthenticatedError(
        "authentication required: send 'authorization: Bearer <token>'",
        reason="MISSING_CREDENTIALS",
    )
