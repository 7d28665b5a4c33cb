"""The decision store's event streams on Redis: one shard at a time, or every shard at once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from redis import exceptions as rx
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from leaky_tokens.token.adapters import redis_codec as codec
from leaky_tokens.token.adapters.key_layout import KeyLayout
from leaky_tokens.token.adapters.redis_errors import mapped
from leaky_tokens.token.adapters.redis_wire import RedisWire, command
from leaky_tokens.token.domain.ports import StoredEvent, StoreUnavailableError

Client = Redis | RedisCluster
_YIELD_EVERY = 200  # decoded events between two turns of the loop (a backlog's big reads)


class RedisEventLog:
    """Each shard's stream `<base>ev`, appended by the scripts, read and trimmed by the relay.

    The batch calls (`read_batch`, `ack_batch`) send one command per shard in one round
    trip: over `wire` (a connection of the relay's own, so a backlog's large replies never
    queue the decisions' replies behind them) or else redis-py's pipeline, which a cluster
    splits by node. A shard's error reply is that shard's result; a connection failure or
    timeout fails the whole call.
    """

    def __init__(self, client: Client, layout: KeyLayout, wire: RedisWire | None = None):
        self._client, self._layout, self._wire = client, layout, wire

    def _stream(self, shard: int) -> str:
        return self._layout.base(shard) + "ev"

    async def read(self, shard: int, after: str, limit: int) -> list[StoredEvent]:
        start = f"({after}" if after not in ("", "0") else "-"
        try:
            found = await self._client.xrange(self._stream(shard), min=start, max="+", count=limit)
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]], found)
        except (rx.RedisError, rx.RedisClusterException) as error:
            raise mapped(error) from error
        return [StoredEvent(_str(pos), codec.event(fields)) for pos, fields in entries]

    async def ack(self, shard: int, upto: str) -> int:
        try:
            stream = self._stream(shard)
            return int(await self._client.xtrim(stream, minid=_after(upto), approximate=False))
        except (rx.RedisError, rx.RedisClusterException) as error:
            raise mapped(error) from error

    async def pending(self, shard: int) -> int:
        try:
            return int(await self._client.xlen(self._stream(shard)))
        except (rx.RedisError, rx.RedisClusterException) as error:
            raise mapped(error) from error

    async def read_batch(
        self, shards: Sequence[int], limit: int
    ) -> list[list[StoredEvent] | BaseException]:
        """Up to `limit` events from the start of each shard's log, in one round trip."""
        streams = [self._stream(s) for s in shards]
        if self._wire is not None:
            count = str(limit)
            payload = b"".join(command("XRANGE", s, "-", "+", "COUNT", count) for s in streams)
            replies = await self._execute(payload, len(streams))
            raw = [r if isinstance(r, BaseException) else _entries(r) for r in replies]
        else:
            raw = await self._pipeline(
                lambda p, s: p.xrange(s, min="-", max="+", count=limit), streams
            )
        found: list[list[StoredEvent] | BaseException] = []
        decoded = 0
        for reply in raw:
            if isinstance(reply, BaseException):
                found.append(mapped(reply))
                continue
            found.append([StoredEvent(_str(pos), codec.event(fields)) for pos, fields in reply])
            decoded += len(reply)
            if decoded >= _YIELD_EVERY:  # a large backlog must not hold the loop for long
                decoded = 0
                await asyncio.sleep(0)
        return found

    async def ack_batch(self, acks: Sequence[tuple[int, str]]) -> list[int | BaseException]:
        """Trim each (shard, upto) in one round trip; how many each trimmed, or its error."""
        pairs = [(self._stream(shard), _after(upto)) for shard, upto in acks]
        if self._wire is not None:
            payload = b"".join(command("XTRIM", s, "MINID", m) for s, m in pairs)
            replies = await self._execute(payload, len(pairs))
        else:
            minids = dict(pairs)
            replies = await self._pipeline(
                lambda p, s: p.xtrim(s, minid=minids[s], approximate=False), [s for s, _ in pairs]
            )
        return [mapped(r) if isinstance(r, BaseException) else int(r) for r in replies]

    async def _execute(self, payload: bytes, count: int) -> list[Any]:
        assert self._wire is not None
        try:
            return await self._wire.execute(payload, count)
        except (rx.RedisError, OSError) as error:
            raise StoreUnavailableError(f"redis: {error}") from error

    async def _pipeline(self, add: Any, streams: Sequence[str]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for stream in streams:
            add(pipe, stream)
        try:
            return list(await pipe.execute(raise_on_error=False))
        except (rx.RedisError, rx.RedisClusterException) as error:
            raise mapped(error) from error
        except OSError as error:
            raise StoreUnavailableError(f"redis: {error}") from error


def _after(upto: str) -> str:
    # MINID keeps entries at or after the id given: the one right after `upto`.
    ms, _, seq = upto.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _entries(reply: list[Any]) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """An XRANGE reply as RESP gives it (id, flat field list) -> (id, fields), as redis-py."""
    out = []
    for pos, flat in reply:
        it = iter(flat)
        out.append((pos, dict(zip(it, it, strict=True))))
    return out


def _str(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
