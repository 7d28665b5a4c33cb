"""A small typed Python client of leaky-tokens' public API (ADR 0044).

    from leaky_tokens.client import LeakyClient, RateLimited

    with LeakyClient("127.0.0.1:8080") as client:
        client.login("alice", "correct horse")
        with client.reservation("openai", 800) as held:
            held.actual = call_the_llm()          # settled at 'actual', released on error

`AsyncLeakyClient` is the same for asyncio (`async with client.reservation(...)`). Both
speak gRPC to Envoy's port over the generated stubs (`leaky.*`) and return their proto
messages; failures are the typed exceptions of `leaky_tokens.client.errors`. The package
imports no service code (an import-linter contract), so it is usable on its own.
"""

from leaky_tokens.client.aio import AsyncLeakyClient
from leaky_tokens.client.client import (
    DEFAULT_TARGET,
    LeakyClient,
    Reservation,
    new_idempotency_key,
)
from leaky_tokens.client.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    IdempotencyKeyReused,
    Internal,
    InvalidArgument,
    LeakyError,
    NotFound,
    NotOrgMember,
    PermissionDenied,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
    RequestExceedsCapacity,
    ReservationClosed,
    ResourceExhausted,
    StoreUnavailable,
    TokenExpired,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)
from leaky_tokens.client.retry import RetryPolicy

__all__ = [
    "DEFAULT_TARGET",
    "AlreadyExists",
    "AsyncLeakyClient",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "IdempotencyKeyReused",
    "Internal",
    "InvalidArgument",
    "LeakyClient",
    "LeakyError",
    "NotFound",
    "NotOrgMember",
    "PermissionDenied",
    "ProviderUnavailable",
    "QuotaExhausted",
    "RateLimited",
    "RequestExceedsCapacity",
    "Reservation",
    "ReservationClosed",
    "ResourceExhausted",
    "RetryPolicy",
    "StoreUnavailable",
    "TokenExpired",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
    "new_idempotency_key",
]
