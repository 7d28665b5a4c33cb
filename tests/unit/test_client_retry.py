"""The client's retry decisions and backoff, and errors without details (no I/O)."""

from __future__ import annotations

import random
from datetime import timedelta

import grpc
import pytest

from leaky_tokens.client import (
    LeakyError,
    RateLimited,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)


def error(code: grpc.StatusCode, reason: str = "", retry_after: float | None = None) -> LeakyError:
    delay = None if retry_after is None else timedelta(seconds=retry_after)
    return LeakyError(code, "x", reason=reason, retry_after=delay)


def test_only_unavailable_is_retryable_and_never_a_failed_provider_call() -> None:
    policy = RetryPolicy()
    assert policy.retryable(error(grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE"))
    assert policy.retryable(error(grpc.StatusCode.UNAVAILABLE))  # e.g. Envoy's no upstream
    assert not policy.retryable(error(grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"))
    for code in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INVALID_ARGUMENT,
    ):
        assert not policy.retryable(error(code))


def test_backoff_is_jittered_under_a_capped_exponential() -> None:
    policy = RetryPolicy(
        initial_backoff=timedelta(milliseconds=100),
        max_backoff=timedelta(milliseconds=300),
        random=random.Random(7),  # noqa: S311 (jitter, not secrets)
    )
    failed = error(grpc.StatusCode.UNAVAILABLE)
    for retry, ceiling in ((1, 0.1), (2, 0.2), (3, 0.3), (4, 0.3), (10, 0.3)):
        waits = [policy.backoff(retry, failed).total_seconds() for _ in range(200)]
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling / 2  # full jitter spreads over the whole range


def test_the_servers_retry_info_wins_over_backoff() -> None:
    failed = error(grpc.StatusCode.UNAVAILABLE, "IDEMPOTENCY_KEY_IN_FLIGHT", retry_after=0.75)
    assert RetryPolicy().backoff(1, failed) == timedelta(seconds=0.75)


@pytest.mark.parametrize(
    "bad",
    [
        {"max_attempts": 0},
        {"initial_backoff": timedelta(0)},
        {"max_backoff": timedelta(milliseconds=1)},
        {"multiplier": 0.5},
    ],
)
def test_a_nonsense_policy_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        RetryPolicy(**bad)  # type: ignore[arg-type]


class BareError(grpc.RpcError):
    """A failure with no status details, as Envoy or the transport make them."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        return (("retry-after", "3"),)


def test_an_error_without_details_is_typed_by_its_code() -> None:
    mapped = from_rpc_error(BareError(grpc.StatusCode.UNAVAILABLE, "no healthy upstream"))
    assert type(mapped) is Unavailable
    assert (mapped.reason, mapped.message) == ("", "no healthy upstream")
    assert mapped.trailers == {"retry-after": "3"}
    assert type(from_rpc_error(BareError(grpc.StatusCode.UNAUTHENTICATED, "x"))) is Unauthenticated
    # A reason only refines its own code: RATE_LIMITED needs RESOURCE_EXHAUSTED.
    assert not isinstance(from_rpc_error(BareError(grpc.StatusCode.ABORTED, "x")), RateLimited)
