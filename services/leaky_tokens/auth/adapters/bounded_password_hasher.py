"""A PasswordHasher wrapper that bounds hashing work: K running, Q waiting, the rest refused."""

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


class BoundedPasswordHasher:
    """At most `concurrency` hashes run and `queue` wait; one more is HashingBusyError.

    Without a bound a flood of logins queues unboundedly and every caller (valid logins
    included) waits behind it; with it the flood is refused in microseconds and the hashes
    that are admitted finish in bounded time.
    """

    def __init__(
        self,
        inner: PasswordHasher,
        concurrency: int,
        queue: int,
        retry_after_seconds: float = 1.0,
    ) -> None:
        if concurrency < 1 or queue < 0:
            raise ValueError("concurrency must be >= 1 and queue >= 0")
        self._inner = inner
        self._slots = asyncio.Semaphore(concurrency)
        self._capacity = concurrency + queue
        self._admitted = 0
        self._retry_after = retry_after_seconds

    @property
    def admitted(self) -> int:
        """Hashes running or waiting right now."""
        return self._admitted

    async def _bounded(self, work: Callable[[], Awaitable[T]]) -> T:
        if self._admitted >= self._capacity:
            raise HashingBusyError(self._retry_after)
        self._admitted += 1
        try:
            async with self._slots:
                return await work()
        finally:
            self._admitted -= 1

    async def hash(self, password: str) -> str:
        return await self._bounded(lambda: self._inner.hash(password))

    async def verify(self, password_hash: str | None, password: str) -> bool:
        return await self._bounded(lambda: self._inner.verify(password_hash, password))

    def needs_rehash(self, password_hash: str) -> bool:
        return self._inner.needs_rehash(password_hash)
