"""Typed exceptions for the errors the API returns, decoded from the gRPC status details.

Every service answers a failure with a gRPC status whose details carry a google.rpc.ErrorInfo
(domain "leaky-tokens", a stable reason), BadRequest field violations for bad input, RetryInfo
when waiting helps, and for token denials the token API's LimitDecision (every level's
LimitStatus). `from_rpc_error` turns that into one exception class per reason a caller may
branch on (RateLimited, QuotaExhausted, ...), each a subclass of the class of its gRPC code
(ResourceExhausted, ...), and everything else into the class of its code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from leaky.token.v1 import limits_pb2

ERROR_DOMAIN = "leaky-tokens"


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field (BadRequest.FieldViolation), e.g. ("tokens", "must be positive")."""

    field: str
    description: str


class LeakyError(Exception):
    """A call failed: its gRPC status, the ErrorInfo reason and what the details said."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    """The gRPC status code."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        retry_after: timedelta | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        limits: limits_pb2.LimitDecision | None = None,
        trailers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}" + (f" ({reason})" if reason else ""))
        self.code = code
        self.message = message
        self.reason = reason
        """ErrorInfo.reason (empty when the status carried no ErrorInfo, e.g. Envoy's own)."""
        self.metadata: dict[str, str] = dict(metadata or {})
        """ErrorInfo.metadata."""
        self.retry_after = retry_after
        """RetryInfo.retry_delay: how long to wait before the same call may pass; None when
        the status had no RetryInfo (waiting would not help, or nobody knows)."""
        self.field_violations = field_violations
        """BadRequest field violations (INVALID_ARGUMENT)."""
        self.limits = limits
        """The token API's LimitDecision on a denied Consume or Reserve: every level's
        LimitStatus (limit, remaining, reset_after, retry_after)."""
        self.trailers: dict[str, str] = dict(trailers or {})
        """The text trailing metadata, e.g. `retry-after` and the `x-ratelimit-*` and
        `ratelimit` fields of a denial (what Envoy turns into HTTP headers)."""


class InvalidArgument(LeakyError):
    """INVALID_ARGUMENT (HTTP 400): see `field_violations`."""


class Unauthenticated(LeakyError):
    """UNAUTHENTICATED (HTTP 401): missing, malformed, expired or unknown credentials."""


class TokenExpired(Unauthenticated):
    """The access token expired (reason TOKEN_EXPIRED): log in again."""


class PermissionDenied(LeakyError):
    """PERMISSION_DENIED (HTTP 403)."""


class NotOrgMember(PermissionDenied):
    """The caller is not (or no longer) a member of the organization (NOT_ORG_MEMBER)."""


class NotFound(LeakyError):
    """NOT_FOUND (HTTP 404), also for things that exist but the caller may not see."""


class AlreadyExists(LeakyError):
    """ALREADY_EXISTS (HTTP 409)."""


class IdempotencyKeyReused(AlreadyExists):
    """The idempotency key was used before for a different request (IDEMPOTENCY_KEY_REUSED)."""


class FailedPrecondition(LeakyError):
    """FAILED_PRECONDITION (HTTP 400)."""


class ReservationClosed(FailedPrecondition):
    """The reservation was settled, released or expired (RESERVATION_SETTLED, _RELEASED,
    _EXPIRED): `reason` says which."""


class ResourceExhausted(LeakyError):
    """RESOURCE_EXHAUSTED (HTTP 429)."""


class RateLimited(ResourceExhausted):
    """A leaky bucket is too full (RATE_LIMITED); `retry_after` says when this request fits."""


class QuotaExhausted(ResourceExhausted):
    """The quota window and the purchased balance lack the tokens (QUOTA_EXHAUSTED);
    `retry_after` only when the next window's allowance would cover the request."""


class RequestExceedsCapacity(ResourceExhausted):
    """The request is larger than a bucket's capacity and can never pass: split it."""


class Unavailable(LeakyError):
    """UNAVAILABLE (HTTP 503): the service, a store or a dependency is away for now."""


class StoreUnavailable(Unavailable):
    """The limit store is unreachable and the failure policy refuses (STORE_UNAVAILABLE)."""


class ProviderUnavailable(Unavailable):
    """The provider call failed after the token service's own retries; every debit was
    refunded (PROVIDER_UNAVAILABLE)."""


class DeadlineExceeded(LeakyError):
    """DEADLINE_EXCEEDED: the call's deadline passed (retries included)."""


class Internal(LeakyError):
    """INTERNAL: a server bug; `metadata["request_id"]` finds its log line."""


_BY_CODE: dict[grpc.StatusCode, type[LeakyError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INTERNAL: Internal,
}

_BY_REASON: dict[tuple[grpc.StatusCode, str], type[LeakyError]] = {
    (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED"): TokenExpired,
    (grpc.StatusCode.PERMISSION_DENIED, "NOT_ORG_MEMBER"): NotOrgMember,
    (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED"): IdempotencyKeyReused,
    (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_SETTLED"): ReservationClosed,
    (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_RELEASED"): ReservationClosed,
    (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_EXPIRED"): ReservationClosed,
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"): RateLimited,
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXHAUSTED"): QuotaExhausted,
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "REQUEST_EXCEEDS_CAPACITY"): RequestExceedsCapacity,
    (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE"): StoreUnavailable,
    (grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"): ProviderUnavailable,
}


@dataclass
class _Details:
    reason: str = ""
    metadata: dict[str, str] | None = None
    retry_after: timedelta | None = None
    violations: tuple[FieldViolation, ...] = ()
    limits: limits_pb2.LimitDecision | None = None


def _details(error: grpc.RpcError) -> tuple[str, _Details]:
    """The status message and the decoded details of a failed call (none when the status
    had no grpc-status-details-bin trailer, e.g. an error made by Envoy or the transport)."""
    found = _Details()
    message = str(error.details() or "") if hasattr(error, "details") else ""
    status = _rich_status(error)
    if status is None:
        return message, found
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            found.reason, found.metadata = str(info.reason), dict(info.metadata)
        elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
            found.retry_after = retry.retry_delay.ToTimedelta()
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            found.violations = tuple(
                FieldViolation(str(v.field), str(v.description)) for v in bad.field_violations
            )
        elif packed.Is(limits_pb2.LimitDecision.DESCRIPTOR):
            decision = limits_pb2.LimitDecision()
            packed.Unpack(decision)
            found.limits = decision
    return str(status.message) or message, found


def _rich_status(error: grpc.RpcError) -> Any:
    """The google.rpc.Status of the grpc-status-details-bin trailer, or None."""
    if not hasattr(error, "trailing_metadata"):
        return None
    for item in error.trailing_metadata() or ():
        key, value = cast(tuple[str, str | bytes], tuple(item))  # type: ignore[arg-type]
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None


def from_rpc_error(error: grpc.RpcError) -> LeakyError:
    """The typed exception for a failed call (a grpc.RpcError that is also a grpc.Call)."""
    code: grpc.StatusCode = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message, found = _details(error)
    cls = _BY_REASON.get((code, found.reason)) or _BY_CODE.get(code, LeakyError)
    return cls(
        code,
        message,
        reason=found.reason,
        metadata=found.metadata,
        retry_after=found.retry_after,
        field_violations=found.violations,
        limits=found.limits,
        trailers=_trailers(error),
    )


def _trailers(error: grpc.RpcError) -> dict[str, str]:
    if not hasattr(error, "trailing_metadata"):
        return {}
    found: dict[str, str] = {}
    for item in error.trailing_metadata() or ():
        key, value = cast(tuple[str, str | bytes], tuple(item))  # type: ignore[arg-type]
        if isinstance(value, str) and not key.endswith("-bin"):
            found[key] = value
    return found
