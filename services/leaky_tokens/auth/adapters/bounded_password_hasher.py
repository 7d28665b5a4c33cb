"""A PasswordHasher wrapper that bounds hashing work: K running, Q waiting, a cap per client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from leaky_tokens.auth.domain.ports import PasswordHasher
from leaky_tokens.runtime.errors import ResourceExhaustedError

T = TypeVar("T")


class HashingBusyError(ResourceExhaustedError):
    """Every hashing slot and queue place is taken: refused at once instead of slowing all."""

    def __init__(self, retry_after_seconds: float) -> None:
        super().__init__(
            "the server is busy checking passwords; retry shortly",
            retry_after_seconds=retry_after_seconds,
            reason="PASSWORD_HASHING_BUSY",
        )


def _nobody() -> str:
    return ""


class BoundedPasswordHasher:
    """At most `concurrency` hashes run and `queue` wait; one more is HashingBusyError.

    Without a bound a flood of logins queues unboundedly and every caller (valid logins
    included) waits behind it; with it the flood is refused in microseconds and the hashes
    that are admitted finish in bounded time. The queue should be about `concurrency` long:
    a full queue then costs an admitted caller about one hash of waiting (ADR 0012).

    `client()` names the caller of the current request (its address key, "" if unknown);
    one client may have at most `per_client` hashes running or waiting, so a flood from one
    address is refused at once while the others' hashes still find free slots.
    """

    def __init__(
        self,
        inner: PasswordHasher,
        concurrency: int,
        queue: int,
        retry_after_seconds: float = 1.0,
        *,
        per_client: int = 0,
        client: Callable[[], str] = _nobody,
    ) -> None:
        if concurrency < 1 or queue < 0 or per_client < 0:
            raise ValueError("concurrency must be >= 1, queue and per_client >= 0")
        self._inner = inner
        self._slots = asyncio.Semaphore(concurrency)
        self._capacity = concurrency + queue
        self._per_client = per_client  # 0: no per-client cap
        self._client = client
        self._admitted = 0
        self._running = 0
        self._by_client: dict[str, int] = {}
        self._retry_after = retry_after_seconds

    @property
    def admitted(self) -> int:
        """Hashes running or waiting right now."""
        return self._admitted

    @property
    def running(self) -> int:
        """Hashes holding a slot right now."""
        return self._running

    @property
    def queued(self) -> int:
        """Hashes waiting for a slot right now."""
        return self._admitted - self._running

    def admitted_for(self, client: str) -> int:
        """Hashes of one client running or waiting right now."""
        return self._by_client.get(client, 0)

    async def _bounded(self, work: Callable[[], Awaitable[T]]) -> T:
        client = self._client() if self._per_client else ""
        if self._admitted >= self._capacity or (
            client and self._by_client.get(client, 0) >= self._per_client
        ):
            raise HashingBusyError(self._retry_after)
        self._admitted += 1
        if client:
            self._by_client[client] = self._by_client.get(client, 0) + 1
        try:
            async with self._slots:
                self._running += 1
                try:
                    return await work()
                finally:
                    self._running -= 1
        finally:
            self._admitted -= 1
            if client:
                left = self._by_client[client] - 1
                if left:
                    self._by_client[client] = left
                else:
                    del self._by_client[client]  # bounded by clients in flight, not ever seen

    async def hash(self, password: str) -> str:
        return await self._bounded(lambda: self._inner.hash(password))

    async def verify(self, password_hash: str | None, password: str) -> bool:
        return await self._bounded(lambda: self._inner.verify(password_hash, password))

    def needs_rehash(self, password_hash: str) -> bool:
        return self._inner.needs_rehash(password_hash)
