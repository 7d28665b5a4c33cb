"""ShouldRateLimit's own lane: the interceptor's per-call duties done inline (ADR 0034)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any, NoReturn

import grpc

from leaky_tokens.runtime import status
from leaky_tokens.runtime.errors import DomainError, FieldViolation, InvalidArgumentError
from leaky_tokens.runtime.interceptor_parts import (
    Context,
    MethodMetrics,
    OwnLane,
    abort,
    request_id_of,
)
from leaky_tokens.runtime.logging import request_id_var

log = logging.getLogger(__name__)

Answer = Callable[[bytes], Awaitable[bytes]]


def rls_lane(method: str, answer: Answer, max_bytes: int) -> OwnLane:
    """The handler of `method` (public: Envoy calls without credentials), `answer` turning the
    request's bytes into the response's, with what the interceptor would do around it:

    - a request over the interceptor's `max_message_bytes` is INVALID_ARGUMENT on `request`;
    - a DomainError (a bad request's field violations, a store that cannot be reached) is
      answered through the one mapping (runtime/status.py), its trailers carrying the
      request id (the caller's x-request-id, else a fresh one), and counted by its code;
    - an unexpected error is logged with its traceback and that request id, answered
      INTERNAL; a client gone mid-call is CANCELLED, not an error;
    - every call is counted (`..._grpc_server_handled`) and timed as any method is.

    What it leaves out, on success only: the request id is neither read nor sent back (it
    only matters to find a log line, and a successful decision logs nothing; Envoy's ratelimit
    client ignores the metadata of the answer), and no contextvars are set (the RPC reads no
    caller, adds no headers). No parsing or serialization either: bytes in, bytes out.
    """

    def bind(metrics: MethodMetrics | None, limit: int) -> Any:
        return grpc.unary_unary_rpc_method_handler(_handler(method, answer, metrics, limit))

    return OwnLane(bind, max_bytes)


def _handler(
    method: str, answer: Answer, metrics: MethodMetrics | None, limit: int
) -> Callable[[bytes, Context], Awaitable[bytes]]:
    ok = metrics.ok if metrics is not None else None
    latency = metrics.latency if metrics is not None else None

    async def fail(error: Exception, context: Context) -> NoReturn:
        request_id = request_id_of(context.invocation_metadata())
        request_id_var.set(request_id)
        if isinstance(error, DomainError):
            rpc_status = status.to_status(error)
            _count(metrics, rpc_status.code)
            await abort(context, rpc_status, request_id)
        if isinstance(error, grpc.aio.AbortError):  # context.abort, should anything call it
            _count(metrics, context.code() or grpc.StatusCode.UNKNOWN)
            raise error
        if context.cancelled():
            _count(metrics, grpc.StatusCode.CANCELLED)
            raise asyncio.CancelledError("the client went away") from error
        _count(metrics, grpc.StatusCode.INTERNAL)
        log.error("unhandled error in %s", method, exc_info=error)
        await abort(context, status.internal(request_id), request_id)

    async def handle(data: bytes, context: Context) -> bytes:
        started = perf_counter()
        try:
            if len(data) > limit:
                description = f"request is {len(data)} bytes; the limit is {limit}"
                raise InvalidArgumentError([FieldViolation("request", description)])
            response = await answer(data)
        except Exception as error:  # mapped to a status, never lost
            await fail(error, context)
        except BaseException:  # CancelledError: the client went away
            _count(metrics, grpc.StatusCode.CANCELLED)
            raise
        finally:
            if latency is not None:
                latency.observe(perf_counter() - started)
        if ok is not None:
            ok.inc()
        return response

    return handle


def _count(metrics: MethodMetrics | None, code: grpc.StatusCode | None) -> None:
    if metrics is not None:
        metrics.count(code)
