"""What the synchronous and the asyncio clients share: credentials, the attempt loop's
decisions, the requests they send and the reservation handle."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from leaky.analytics.v1 import analytics_pb2
from leaky.auth.v1 import auth_pb2
from leaky.token.v1 import token_pb2
from leaky_tokens.client.errors import DeadlineExceeded, LeakyError, Unauthenticated
from leaky_tokens.client.retry import RetryPolicy

DEFAULT_TARGET = "127.0.0.1:8080"
DEFAULT_TIMEOUT = timedelta(seconds=10)
DEFAULT_REFRESH_MARGIN = timedelta(seconds=30)
TERMINAL_PURCHASE = (token_pb2.PURCHASE_STATUS_COMPLETED, token_pb2.PURCHASE_STATUS_FAILED)


@dataclass
class Login:
    """What a re-login needs; the password stays in this process's memory, never logged."""

    username: str
    password: str = field(repr=False)


@dataclass
class Credentials:
    """How calls authenticate: a JWT (renewed by logging in again when `login` is known) or
    an API key."""

    token: str = field(default="", repr=False)
    expires_at: datetime | None = None
    login: Login | None = None
    api_key: str = field(default="", repr=False)

    @classmethod
    def from_login(
        cls, token: str, expires: timestamp_pb2.Timestamp, login: Login | None
    ) -> Credentials:
        at = expires.ToDatetime(tzinfo=UTC) if expires.seconds or expires.nanos else None
        return cls(token=token, expires_at=at, login=login)

    def due(self, now: datetime, margin: timedelta) -> Login | None:
        """The login to redo before the next call: the token expires within `margin`."""
        if self.api_key or self.login is None:
            return None
        if self.expires_at is None or self.expires_at - margin <= now:
            return self.login
        return None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self.api_key:
            return (("x-api-key", self.api_key),)
        if self.token:
            return (("authorization", f"Bearer {self.token}"),)
        return ()


RELOGIN: Literal["relogin"] = "relogin"


class Attempts:
    """One call's attempts: a deadline over all of them, retries on UNAVAILABLE only when
    the call is idempotent, and one new login after UNAUTHENTICATED when a password login is
    known (the call was refused before it ran, so that is safe for any call)."""

    def __init__(
        self, policy: RetryPolicy, now: float, timeout: timedelta, idempotent: bool
    ) -> None:
        self._policy, self._idempotent = policy, idempotent
        self.deadline = now + timeout.total_seconds()
        self._attempt, self._relogged = 1, False

    def remaining(self, now: float) -> float:
        """Seconds left for the next attempt; DeadlineExceeded when none are."""
        left = self.deadline - now
        if left <= 0:
            raise DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        return left

    def after(self, error: LeakyError, now: float, can_relogin: bool) -> float | Literal["relogin"]:
        """What to do after a failed attempt: RELOGIN, or the seconds to wait before the next
        attempt; raises `error` when the call is not tried again."""
        if isinstance(error, Unauthenticated) and can_relogin and not self._relogged:
            self._relogged = True
            return RELOGIN
        again = self._idempotent and self._attempt < self._policy.max_attempts
        if not (again and self._policy.retryable(error)):
            raise error
        wait = self._policy.backoff(self._attempt, error).total_seconds()
        if now + wait >= self.deadline:
            raise error
        self._attempt += 1
        return wait


@dataclass
class Reservation:
    """An open reservation inside `reservation(...)`: set `actual` to the tokens really used;
    leaving the block settles at `actual` (at the whole estimate when it is not set), an
    exception releases everything instead."""

    held: token_pb2.ReserveResponse
    """The Reserve answer (the reservation, every level after the hold)."""
    actual: int | None = None
    settled: token_pb2.SettleResponse | None = None
    """The Settle answer, once the block ended normally."""
    released: token_pb2.ReleaseResponse | None = None
    """The Release answer, once the block ended with an exception."""

    @property
    def reservation_id(self) -> str:
        return self.held.reservation.reservation_id

    @property
    def reserved_tokens(self) -> int:
        return self.held.reservation.reserved_tokens

    @property
    def settle_at(self) -> int:
        return self.reserved_tokens if self.actual is None else self.actual


def release_note(handle: Reservation, failed: LeakyError) -> str:
    return f"releasing {handle.reservation_id} failed too: {failed}"


class Requests:
    """The request messages, with the authenticated user as the default `user_id`."""

    @staticmethod
    def create_api_key(
        user_id: str, name: str, expires_at: datetime | None
    ) -> auth_pb2.CreateApiKeyRequest:
        request = auth_pb2.CreateApiKeyRequest(user_id=user_id, name=name)
        if expires_at is not None:
            request.expires_at.FromDatetime(expires_at)
        return request

    @staticmethod
    def reserve(
        user_id: str,
        provider: str,
        tokens: int,
        org_id: str,
        ttl: timedelta | None,
        idempotency_key: str,
    ) -> token_pb2.ReserveRequest:
        request = token_pb2.ReserveRequest(
            user_id=user_id,
            org_id=org_id,
            provider=provider,
            tokens=tokens,
            idempotency_key=idempotency_key,
        )
        if ttl is not None:
            duration = duration_pb2.Duration()
            duration.FromTimedelta(ttl)
            request.ttl.CopyFrom(duration)
        return request

    @staticmethod
    def report(
        provider: str, window_minutes: int | None, limit: int | None, user_id: str, org_id: str
    ) -> analytics_pb2.GetReportRequest:
        request = analytics_pb2.GetReportRequest(provider=provider, user_id=user_id, org_id=org_id)
        if window_minutes is not None:
            request.window_minutes = window_minutes
        if limit is not None:
            request.limit = limit
        return request

    @staticmethod
    def usage(
        provider: str, limit: int | None, user_id: str, org_id: str
    ) -> analytics_pb2.GetUsageRequest:
        request = analytics_pb2.GetUsageRequest(provider=provider, user_id=user_id, org_id=org_id)
        if limit is not None:
            request.limit = limit
        return request


def still_running(saga_id: str, seen: token_pb2.TokenPurchase) -> DeadlineExceeded:
    status = token_pb2.PurchaseStatus.Name(seen.status)
    return DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED, f"purchase {saga_id} still {status}")
