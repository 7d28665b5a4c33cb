"""Domain errors shared by every service; pure Python, mapped to gRPC status in one place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field and why."""

    field: str
    description: str


class DomainError(Exception):
    """Base of every error a use case may raise on purpose.

    `reason` is a stable UPPER_SNAKE identifier clients may branch on; `message` is for people.
    """

    reason = "DOMAIN_ERROR"
    # Set by the layer that encodes the error (never by the domain, which knows no wire
    # format): protobuf messages packed into the google.rpc.Status details after ErrorInfo,
    # and response metadata sent with the status (trailers-only, so Envoy's transcoder makes
    # them HTTP headers of the error response).
    details: tuple[Any, ...] = ()
    headers: Mapping[str, str] = MappingProxyType({})

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgumentError(DomainError):
    """The request is malformed; `violations` names each bad field."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation], message: str | None = None) -> None:
        text = message or "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(text)
        self.violations = violations


class UnauthenticatedError(DomainError):
    """The caller did not prove who they are."""

    reason = "UNAUTHENTICATED"


class PermissionDeniedError(DomainError):
    """The caller is known but may not do this."""

    reason = "PERMISSION_DENIED"


class NotFoundError(DomainError):
    """The named thing does not exist (or is not visible to the caller)."""

    reason = "NOT_FOUND"


class AlreadyExistsError(DomainError):
    """A unique thing already exists."""

    reason = "ALREADY_EXISTS"


class FailedPreconditionError(DomainError):
    """The system is not in a state where this can be done."""

    reason = "FAILED_PRECONDITION"


class ResourceExhaustedError(DomainError):
    """A limit was hit; retry after `retry_after_seconds`."""

    reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        retry_after_seconds: float = 0.0,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_seconds = retry_after_seconds


class UnavailableError(DomainError):
    """A dependency is down; retrying later may work."""

    reason = "UNAVAILABLE"


class UnimplementedError(DomainError):
    """The RPC exists in the contract but this build does not implement it yet."""

    reason = "UNIMPLEMENTED"


class Validator:
    """Collects field violations and raises them together."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def fail(self, field_name: str, description: str) -> None:
        """Record one violation."""
        self.violations.append(FieldViolation(field_name, description))

    def require(self, field_name: str, value: str) -> str:
        """Record a violation if `value` is blank; return it stripped."""
        stripped = value.strip()
        if not stripped:
            self.fail(field_name, "is required")
        return stripped

    def raise_if_any(self) -> None:
        """Raise InvalidArgumentError if anything was recorded."""
        if self.violations:
            raise InvalidArgumentError(list(self.violations))
