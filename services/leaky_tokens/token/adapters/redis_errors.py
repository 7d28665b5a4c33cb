"""Which Redis errors mean "the store cannot serve now", as the decision store maps them."""

from __future__ import annotations

from redis import exceptions as rx

from leaky_tokens.token.domain.ports import StoreTimeoutError, StoreUnavailableError

# What says "the store cannot serve now" (the failure policy takes over), as opposed to a
# script's own error: connection trouble, a cluster without a primary for the slot, a
# read-only replica after a failover, a full server, a script running too long (BUSY).
DOWN = (
    rx.ConnectionError,
    rx.TimeoutError,
    rx.ClusterError,
    rx.TryAgainError,
    rx.ReadOnlyError,
    rx.OutOfMemoryError,
    rx.RedisClusterException,
)


def unavailable(result: object) -> bool:
    """Whether a reply or error says the store cannot serve now."""
    if isinstance(result, DOWN):
        return True
    return isinstance(result, rx.ResponseError) and str(result).startswith("BUSY")


def mapped(error: object) -> BaseException:
    """StoreUnavailableError for what `unavailable` says (StoreTimeoutError for a reply that
    did not come in time), else the error itself."""
    if isinstance(error, rx.TimeoutError):
        return StoreTimeoutError(f"redis: {error}")
    if unavailable(error):
        return StoreUnavailableError(f"redis: {error}")
    if isinstance(error, BaseException):
        return error
    return RuntimeError(f"redis: {error!r}")
