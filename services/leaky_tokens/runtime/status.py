"""The one place that turns domain errors into gRPC status with google.rpc details."""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from leaky_tokens.runtime import errors

ERROR_DOMAIN = "leaky-tokens"

_CODES: list[tuple[type[errors.DomainError], int]] = [
    (errors.InvalidArgumentError, code_pb2.INVALID_ARGUMENT),
    (errors.UnauthenticatedError, code_pb2.UNAUTHENTICATED),
    (errors.PermissionDeniedError, code_pb2.PERMISSION_DENIED),
    (errors.NotFoundError, code_pb2.NOT_FOUND),
    (errors.AlreadyExistsError, code_pb2.ALREADY_EXISTS),
    (errors.FailedPreconditionError, code_pb2.FAILED_PRECONDITION),
    (errors.ResourceExhaustedError, code_pb2.RESOURCE_EXHAUSTED),
    (errors.UnavailableError, code_pb2.UNAVAILABLE),
    (errors.UnimplementedError, code_pb2.UNIMPLEMENTED),
]


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


@dataclass(frozen=True)
class _Status(grpc.Status):
    """A grpc.Status with extra trailing metadata (grpc_status builds only the details)."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def to_rpc_status(error: errors.DomainError) -> status_pb2.Status:
    """The google.rpc.Status of an error: ErrorInfo always, BadRequest for field violations,
    RetryInfo when a retry delay is known, then the error's own `details`."""
    code = next((c for cls, c in _CODES if isinstance(error, cls)), code_pb2.UNKNOWN)
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
            )
        )
    ]
    if isinstance(error, errors.InvalidArgumentError):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    if isinstance(error, errors.ResourceExhaustedError) and error.retry_after_seconds > 0:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_seconds * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    details += [_pack(extra) for extra in error.details if isinstance(extra, Message)]
    return status_pb2.Status(code=code, message=error.message, details=details)


def to_status(error: errors.DomainError) -> grpc.Status:
    """The gRPC status of an error, its google.rpc.Status (to_rpc_status) in the details.

    A known retry delay also goes out as `retry-after` metadata (whole seconds), which
    Envoy's transcoder passes on as the HTTP Retry-After header of the 429; the error's own
    `headers` go out beside `retry-after` (e.g. the token service's LimitDecision and
    X-RateLimit-* / RateLimit fields).
    """
    status = rpc_status.to_status(to_rpc_status(error))
    extra_headers = list(error.headers.items())
    if isinstance(error, errors.ResourceExhaustedError) and error.retry_after_seconds > 0:
        extra_headers.append(("retry-after", str(max(1, math.ceil(error.retry_after_seconds)))))
    if extra_headers:
        metadata = (*status.trailing_metadata, *extra_headers)
        return _Status(status.code, status.details, metadata)
    return status


def internal(request_id: str) -> grpc.Status:
    """The status of an unexpected failure: no internals, the request id to find the log."""
    info = error_details_pb2.ErrorInfo(
        reason="INTERNAL", domain=ERROR_DOMAIN, metadata={"request_id": request_id}
    )
    message = f"internal error (request id {request_id})"
    status = status_pb2.Status(code=code_pb2.INTERNAL, message=message, details=[_pack(info)])
    return rpc_status.to_status(status)
