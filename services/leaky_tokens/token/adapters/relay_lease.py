"""Which token instance relays: a lease in Redis, so instances do not all publish every event."""

from __future__ import annotations

import uuid
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

# Take the lease when free, or extend it when it is already ours; answers 1 when held.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RelayLease(Protocol):
    """`claim` takes or extends the lease (True: this instance relays now)."""

    async def claim(self) -> bool:
        """Hold the lease for another term, or learn that another instance holds it."""

    async def release(self) -> None:
        """Give the lease up (on a clean stop), so a standby takes over at once; closes it."""


class SoleLease:
    """One process holds every event (the in-memory store): always this instance's turn."""

    async def claim(self) -> bool:
        return True

    async def release(self) -> None:
        return None


class RedisLease:
    """SET NX PX with an owner token; a holder that dies loses it after `ttl_ms`.

    A holder paused past its term may publish a batch that its successor publishes too:
    a duplicate, never a loss, which at-least-once delivery allows (ADR 0024).
    """

    def __init__(self, client: Redis | RedisCluster, key: str, ttl_ms: int) -> None:
        self._client = client
        self._key = key
        self._ttl_ms = ttl_ms
        self.owner = uuid.uuid4().hex
        self._released = False

    async def claim(self) -> bool:
        if self._released:  # a relay task outliving its stop must not reopen a connection
            return False
        held = await self._client.eval(_CLAIM, 1, self._key, self.owner, str(self._ttl_ms))
        return bool(int(held))

    async def release(self) -> None:
        self._released = True
        try:
            await self._client.eval(_RELEASE, 1, self._key, self.owner)
        finally:
            await self._client.aclose()
