"""PasswordHasher with argon2id (argon2-cffi), in worker threads so RPCs keep flowing."""

from __future__ import annotations

import asyncio
import os
import secrets

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError


class Argon2PasswordHasher:
    """argon2id with configurable cost; verification is constant-time inside libargon2.

    Hashing is CPU-bound and takes tens of milliseconds, so it runs in threads (libargon2
    releases the GIL), at most one per core, leaving the event loop free for other RPCs.
    """

    def __init__(self, time_cost: int = 3, memory_kib: int = 65536, parallelism: int = 1) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID
        )
        self._slots = asyncio.Semaphore(os.cpu_count() or 1)
        # Verified instead of a missing or foreign hash, so every failure costs the same.
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    def _verify(self, password_hash: str | None, password: str) -> bool:
        usable = password_hash if password_hash and password_hash.startswith("$argon2") else None
        try:
            matched = self._hasher.verify(usable or self._dummy, password)
        except (VerificationError, InvalidHashError):
            return False
        return matched and usable is not None

    async def verify(self, password_hash: str | None, password: str) -> bool:
        async with self._slots:
            return await asyncio.to_thread(self._verify, password_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True
