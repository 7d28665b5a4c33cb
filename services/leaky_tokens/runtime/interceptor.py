"""Server interceptor: request id, authentication, error mapping, input limits and metrics."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry, Counter, Histogram

from leaky_tokens.runtime import status
from leaky_tokens.runtime.errors import DomainError, UnauthenticatedError
from leaky_tokens.runtime.identity import caller_var
from leaky_tokens.runtime.jwt_verifier import JwtVerifier, bearer_token
from leaky_tokens.runtime.logging import request_id_var

log = logging.getLogger(__name__)

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


if TYPE_CHECKING:  # grpc-stubs makes it generic; grpcio's class is not subscriptable
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


class _Rejected:
    """Stands in for a request that could not be decoded, so the handler can answer 400."""

    def __init__(self, description: str) -> None:
        self.description = description


class ServerMetrics:
    """Prometheus metrics of one service: calls by method and code, latency by method."""

    def __init__(self, slug: str, registry: CollectorRegistry) -> None:
        self.handled = Counter(
            f"leaky_{slug}_grpc_server_handled",
            "RPCs completed, by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            f"leaky_{slug}_grpc_server_handling_seconds",
            "RPC handling time in seconds, by method.",
            ["method"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )


class LeakyServerInterceptor(_Interceptor):
    """Wraps every unary-unary handler; streaming handlers (health watch, reflection) pass."""

    def __init__(
        self,
        *,
        verifier: JwtVerifier | None,
        public_methods: frozenset[str],
        metrics: ServerMetrics,
        max_message_bytes: int,
    ) -> None:
        self._verifier = verifier
        self._public = public_methods
        self._metrics = metrics
        self._max = max_message_bytes

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        return grpc.unary_unary_rpc_method_handler(
            # grpc-stubs types handlers as sync; on an aio server they are coroutines.
            self._wrap(method, handler.unary_unary),  # type: ignore[arg-type]
            request_deserializer=self._safe_deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

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

    async def _authenticate(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        caller_var.set(None)
        try:
            token = bearer_token(context.invocation_metadata())  # type: ignore[arg-type]
            if token is None or self._verifier is None:
                raise_unauthenticated()
            caller_var.set(await self._verifier.verify(token))
        except UnauthenticatedError:
            # Public RPCs ignore missing or stale credentials (a client that always sends its
            # expired token must still be able to log in); protected ones refuse them.
            if method not in self._public:
                raise

    def _wrap(self, method: str, behavior: Behavior) -> Behavior:
        metrics = self._metrics

        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            request_id = _request_id(context)
            request_id_var.set(request_id)
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if isinstance(request, _Rejected):
                    code = grpc.StatusCode.INVALID_ARGUMENT
                    await _abort(
                        context, status.invalid_argument("request", request.description), request_id
                    )
                await self._authenticate(method, context)
                response = await behavior(request, context)
                # Sent only on success: an error then goes out trailers-only, and Envoy's
                # transcoder turns such trailers (retry-after, x-request-id) into HTTP headers.
                await context.send_initial_metadata((("x-request-id", request_id),))
                return response
            except DomainError as error:
                grpc_status = status.to_status(error)
                code = grpc_status.code
                await _abort(context, grpc_status, request_id)
            except grpc.aio.AbortError:
                code = context.code() or code
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("unhandled error in %s", method)
                await context.abort(
                    grpc.StatusCode.INTERNAL,
                    f"internal error (request id {request_id})",
                    (("x-request-id", request_id),),
                )
            finally:
                metrics.handled.labels(method, code.name if code else "UNKNOWN").inc()
                metrics.latency.labels(method).observe(time.perf_counter() - started)

        return wrapped


def raise_unauthenticated() -> NoReturn:
    """Raise the standard error for a protected RPC called without credentials."""
    raise UnauthenticatedError(
        "authentication required: send 'authorization: Bearer <token>'",
        reason="MISSING_CREDENTIALS",
    )


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], rpc_status: grpc.Status, request_id: str
) -> None:
    """End the call with `rpc_status`, its trailers carrying the request id too."""
    trailers = (*rpc_status.trailing_metadata, ("x-request-id", request_id))
    await context.abort(rpc_status.code, rpc_status.details, trailers)


def _request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex
