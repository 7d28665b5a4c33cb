"""LeakyClient: the public API through the gateway, over the generated gRPC stubs.

One channel to Envoy's port (or straight to a service) carries every service's calls. Each
call has a deadline (the client's default or the call's own) that covers every attempt;
idempotent calls are retried on UNAVAILABLE with backoff (retry.py); failures are raised as
the typed exceptions of errors.py. Credentials are a JWT from `login` / `register` (logged in
again shortly before it expires, or once when a call is refused as unauthenticated: the API
has no refresh token), a JWT from elsewhere (`use_token`), or an API key (`use_api_key`, sent
as `x-api-key` metadata; Envoy's ext_authz turns it into the caller's identity).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from leaky.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from leaky.auth.v1 import auth_pb2, auth_pb2_grpc
from leaky.token.v1 import token_pb2, token_pb2_grpc
from leaky_tokens.client._core import (
    DEFAULT_REFRESH_MARGIN,
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    RELOGIN,
    TERMINAL_PURCHASE,
    Attempts,
    Credentials,
    Login,
    Requests,
    Reservation,
    release_note,
    still_running,
)
from leaky_tokens.client.errors import LeakyError, from_rpc_error
from leaky_tokens.client.retry import RetryPolicy

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

__all__ = ["DEFAULT_TARGET", "LeakyClient", "Reservation", "new_idempotency_key"]


class LeakyClient:
    """A typed, synchronous client of the auth, token and analytics APIs.

    >>> with LeakyClient("127.0.0.1:8080") as client:  # doctest: +SKIP
    ...     client.login("alice", "correct horse")
    ...     client.consume("openai", 500, prompt="hi")
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: timedelta = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        channel: grpc.Channel | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
        refresh_margin: timedelta = DEFAULT_REFRESH_MARGIN,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`target` is host:port of Envoy (or of one service); `timeout` the default deadline
        of every call, retries included; `channel_credentials` for TLS (plaintext without);
        `refresh_margin` how long before its expiry a logged-in token is renewed. `clock`,
        `monotonic` and `sleep` are for tests."""
        if timeout <= timedelta(0):
            raise ValueError("timeout must be positive")
        if channel is None:
            channel = (
                grpc.secure_channel(target, channel_credentials)
                if channel_credentials is not None
                else grpc.insecure_channel(target)
            )
        self._channel = channel
        self._auth = auth_pb2_grpc.AuthServiceStub(channel)
        self._token = token_pb2_grpc.TokenServiceStub(channel)
        self._analytics = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._margin = refresh_margin
        self._clock, self._monotonic, self._sleep = clock, monotonic, sleep
        self._credentials = Credentials()
        self._lock = threading.Lock()
        self.user_id = ""
        """The authenticated user's id (from login, register or the API key), the default
        `user_id` of every call that takes one."""

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> LeakyClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- the call path -----------------------------------------------------------------

    def _metadata(self, authenticated: bool) -> tuple[tuple[str, str], ...]:
        if not authenticated:
            return ()
        with self._lock:
            login = self._credentials.due(self._clock(), self._margin)
            if login is not None:
                self._login(login)
            return self._credentials.metadata()

    def _login(self, login: Login) -> auth_pb2.LoginResponse:
        request = auth_pb2.LoginRequest(username=login.username, password=login.password)
        answer = self._call(self._auth.Login, request, idempotent=False, authenticated=False)
        self._credentials = Credentials.from_login(answer.token, answer.expires_at, login)
        self.user_id = answer.user_id
        return answer

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        idempotent: bool,
        authenticated: bool = True,
        timeout: timedelta | None = None,
    ) -> Resp:
        """One RPC with a deadline over all attempts (see _core.Attempts)."""
        attempts = Attempts(self.retry, self._monotonic(), timeout or self.timeout, idempotent)
        while True:
            metadata = self._metadata(authenticated)
            try:
                remaining = attempts.remaining(self._monotonic())
                return method(request, timeout=remaining, metadata=metadata)
            except grpc.RpcError as raw:
                error = from_rpc_error(raw)
            login = self._credentials.login if authenticated else None
            step = attempts.after(error, self._monotonic(), can_relogin=login is not None)
            if step == RELOGIN:
                assert login is not None
                with self._lock:
                    self._login(login)
            else:
                self._sleep(step)

    # -- auth --------------------------------------------------------------------------

    def register(
        self, username: str, email: str, password: str, *, timeout: timedelta | None = None
    ) -> auth_pb2.RegisterResponse:
        """Create a user and authenticate as them (never retried: not idempotent)."""
        answer = self._call(
            self._auth.Register,
            auth_pb2.RegisterRequest(username=username, email=email, password=password),
            idempotent=False,
            timeout=timeout,
            authenticated=False,
        )
        with self._lock:
            login = Login(username, password)
            self._credentials = Credentials.from_login(answer.token, answer.expires_at, login)
        self.user_id = answer.user_id
        return answer

    def login(self, username: str, password: str) -> auth_pb2.LoginResponse:
        """Log in; the token is renewed by logging in again shortly before it expires."""
        with self._lock:
            return self._login(Login(username, password))

    def use_token(self, token: str, user_id: str = "") -> None:
        """Authenticate with a JWT obtained elsewhere (never renewed)."""
        with self._lock:
            self._credentials = Credentials(token=token)
        self.user_id = user_id

    def use_api_key(self, api_key: str) -> auth_pb2.ValidateApiKeyResponse:
        """Authenticate every call with an API key (`x-api-key` metadata); the key's owner,
        from ValidateApiKey, becomes `user_id`."""
        with self._lock:
            self._credentials = Credentials(api_key=api_key)
        owner = self.validate_api_key()
        self.user_id = owner.user_id
        return owner

    @property
    def token(self) -> str:
        """The current JWT (empty with an API key or before logging in)."""
        return self._credentials.token

    def validate_api_key(
        self, *, timeout: timedelta | None = None
    ) -> auth_pb2.ValidateApiKeyResponse:
        return self._call(
            self._auth.ValidateApiKey,
            auth_pb2.ValidateApiKeyRequest(),
            idempotent=True,
            timeout=timeout,
        )

    def create_api_key(
        self,
        name: str = "",
        *,
        expires_at: datetime | None = None,
        user_id: str = "",
        timeout: timedelta | None = None,
    ) -> auth_pb2.CreateApiKeyResponse:
        """A new API key (its secret, `api_key`, is shown only here)."""
        request = Requests.create_api_key(user_id or self.user_id, name, expires_at)
        return self._call(self._auth.CreateApiKey, request, idempotent=False, timeout=timeout)

    def list_api_keys(
        self,
        *,
        user_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: timedelta | None = None,
    ) -> auth_pb2.ListApiKeysResponse:
        request = auth_pb2.ListApiKeysRequest(
            user_id=user_id or self.user_id, page_size=page_size, page_token=page_token
        )
        return self._call(self._auth.ListApiKeys, request, idempotent=True, timeout=timeout)

    def revoke_api_key(
        self, api_key_id: str, *, user_id: str = "", timeout: timedelta | None = None
    ) -> auth_pb2.RevokeApiKeyResponse:
        request = auth_pb2.RevokeApiKeyRequest(
            user_id=user_id or self.user_id, api_key_id=api_key_id
        )
        return self._call(self._auth.RevokeApiKey, request, idempotent=False, timeout=timeout)

    # -- token -------------------------------------------------------------------------

    def get_quota(
        self, provider: str, *, user_id: str = "", timeout: timedelta | None = None
    ) -> token_pb2.Quota:
        request = token_pb2.GetQuotaRequest(user_id=user_id or self.user_id, provider=provider)
        return self._call(self._token.GetQuota, request, idempotent=True, timeout=timeout)

    def get_org_quota(
        self, org_id: str, provider: str, *, timeout: timedelta | None = None
    ) -> token_pb2.Quota:
        request = token_pb2.GetOrgQuotaRequest(org_id=org_id, provider=provider)
        return self._call(self._token.GetOrgQuota, request, idempotent=True, timeout=timeout)

    def consume(
        self,
        provider: str,
        tokens: int,
        *,
        prompt: str = "",
        org_id: str = "",
        user_id: str = "",
        idempotency_key: str = "",
        timeout: timedelta | None = None,
    ) -> token_pb2.ConsumeResponse:
        """Spend tokens and call the provider. Retried only with an idempotency key."""
        request = token_pb2.ConsumeRequest(
            user_id=user_id or self.user_id,
            org_id=org_id,
            provider=provider,
            tokens=tokens,
            prompt=prompt,
            idempotency_key=idempotency_key,
        )
        return self._call(
            self._token.Consume, request, idempotent=bool(idempotency_key), timeout=timeout
        )

    def reserve(
        self,
        provider: str,
        tokens: int,
        *,
        org_id: str = "",
        user_id: str = "",
        ttl: timedelta | None = None,
        idempotency_key: str = "",
        timeout: timedelta | None = None,
    ) -> token_pb2.ReserveResponse:
        """Hold an estimate. Retried only with an idempotency key."""
        request = Requests.reserve(
            user_id or self.user_id, provider, tokens, org_id, ttl, idempotency_key
        )
        return self._call(
            self._token.Reserve, request, idempotent=bool(idempotency_key), timeout=timeout
        )

    def settle(
        self, reservation_id: str, actual_tokens: int, *, timeout: timedelta | None = None
    ) -> token_pb2.SettleResponse:
        """Close a reservation at the actual count (idempotent, so retried)."""
        request = token_pb2.SettleRequest(
            reservation_id=reservation_id, actual_tokens=actual_tokens
        )
        return self._call(self._token.Settle, request, idempotent=True, timeout=timeout)

    def release(
        self, reservation_id: str, *, timeout: timedelta | None = None
    ) -> token_pb2.ReleaseResponse:
        """Give a whole reservation back (idempotent, so retried)."""
        request = token_pb2.ReleaseRequest(reservation_id=reservation_id)
        return self._call(self._token.Release, request, idempotent=True, timeout=timeout)

    @contextmanager
    def reservation(
        self,
        provider: str,
        estimate: int,
        *,
        org_id: str = "",
        user_id: str = "",
        ttl: timedelta | None = None,
        idempotency_key: str = "",
        timeout: timedelta | None = None,
    ) -> Iterator[Reservation]:
        """Reserve `estimate` tokens for the block: settle at `r.actual` (the estimate when
        unset) when it ends normally, release everything when it raises (the exception goes
        on; a failed release is added to it as a note, the store expires the hold anyway)."""
        held = self.reserve(
            provider,
            estimate,
            org_id=org_id,
            user_id=user_id,
            ttl=ttl,
            idempotency_key=idempotency_key,
            timeout=timeout,
        )
        handle = Reservation(held)
        try:
            yield handle
        except BaseException as error:
            try:
                handle.released = self.release(handle.reservation_id, timeout=timeout)
            except LeakyError as failed:
                error.add_note(release_note(handle, failed))
            raise
        handle.settled = self.settle(handle.reservation_id, handle.settle_at, timeout=timeout)

    def purchase(
        self,
        provider: str,
        tokens: int,
        *,
        org_id: str = "",
        user_id: str = "",
        idempotency_key: str = "",
        timeout: timedelta | None = None,
    ) -> token_pb2.TokenPurchase:
        """Start a purchase saga (status STARTED). Retried only with an idempotency key (a
        repeat returns the same purchase)."""
        request = token_pb2.PurchaseRequest(
            user_id=user_id or self.user_id,
            org_id=org_id,
            provider=provider,
            tokens=tokens,
            idempotency_key=idempotency_key,
        )
        return self._call(
            self._token.Purchase, request, idempotent=bool(idempotency_key), timeout=timeout
        )

    def get_purchase(
        self, saga_id: str, *, timeout: timedelta | None = None
    ) -> token_pb2.TokenPurchase:
        request = token_pb2.GetPurchaseRequest(saga_id=saga_id)
        return self._call(self._token.GetPurchase, request, idempotent=True, timeout=timeout)

    def list_purchases(
        self, *, page_size: int = 0, page_token: str = "", timeout: timedelta | None = None
    ) -> token_pb2.ListPurchasesResponse:
        request = token_pb2.ListPurchasesRequest(page_size=page_size, page_token=page_token)
        return self._call(self._token.ListPurchases, request, idempotent=True, timeout=timeout)

    def wait_for_purchase(
        self, saga_id: str, *, timeout: timedelta = timedelta(seconds=60), interval: float = 0.2
    ) -> token_pb2.TokenPurchase:
        """Poll GetPurchase until the saga is COMPLETED or FAILED (returned either way);
        DeadlineExceeded when it is still running after `timeout`."""
        deadline = self._monotonic() + timeout.total_seconds()
        while True:
            seen = self.get_purchase(saga_id)
            if seen.status in TERMINAL_PURCHASE:
                return seen
            if self._monotonic() + interval >= deadline:
                raise still_running(saga_id, seen)
            self._sleep(interval)

    # -- analytics ---------------------------------------------------------------------

    def get_report(
        self,
        provider: str,
        *,
        window_minutes: int | None = None,
        limit: int | None = None,
        user_id: str = "",
        org_id: str = "",
        timeout: timedelta | None = None,
    ) -> analytics_pb2.GetReportResponse:
        """Window totals for a provider, scoped to `user_id` or `org_id` (the caller's
        visible usage when both are empty)."""
        request = Requests.report(provider, window_minutes, limit, user_id, org_id)
        return self._call(self._analytics.GetReport, request, idempotent=True, timeout=timeout)

    def get_usage(
        self,
        provider: str,
        *,
        limit: int | None = None,
        user_id: str = "",
        org_id: str = "",
        timeout: timedelta | None = None,
    ) -> analytics_pb2.GetUsageResponse:
        """The latest usage events of a provider, scoped like `get_report`."""
        request = Requests.usage(provider, limit, user_id, org_id)
        return self._call(self._analytics.GetUsage, request, idempotent=True, timeout=timeout)


def new_idempotency_key() -> str:
    """A fresh random idempotency key, for callers that want their consumes retried."""
    return uuid.uuid4().hex
