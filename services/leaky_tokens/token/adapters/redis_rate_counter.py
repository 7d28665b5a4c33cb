"""RedisRequestCounter: ShouldRateLimit's fixed windows in Redis, one script call per batch."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from redis import exceptions as rx
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from leaky_tokens.token.adapters.redis_dispatcher import BatchDispatcher
from leaky_tokens.token.adapters.redis_wire import RedisWire, WireScript
from leaky_tokens.token.domain.ports import StoreUnavailableError
from leaky_tokens.token.domain.rate_counter import CounterHit, CountStep, count_step, window_start

SCRIPT = (files("leaky_tokens.token.adapters") / "lua" / "rate_counter.lua").read_text()
SHA = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()
_WIRE_SCRIPT = WireScript(SHA, SCRIPT)
_DOWN = (
    rx.ConnectionError,
    rx.TimeoutError,
    rx.ClusterError,
    rx.TryAgainError,
    rx.ReadOnlyError,
    rx.OutOfMemoryError,
    rx.RedisClusterException,
)


@dataclass(frozen=True, slots=True)
class _Call:
    keys: tuple[str, ...]
    args: tuple[str, ...]


class RedisRequestCounter:
    """The RequestCounterStore on Redis (or a Redis Cluster).

    Keys follow upstream's layout, `<prefix>rl:{<domain>}<counter key>_<window start s>`,
    expiring when their window ends (plus a second). Every key of one request carries the
    domain as its hash tag so the script stays on one slot. Concurrent requests share one
    batch (BatchDispatcher): on a single Redis over RedisWire the whole batch is one EVALSHA
    (the script takes any number of requests, each still all or nothing), on redis-py (a
    cluster) one EVALSHA per request in one pipeline.
    """

    def __init__(
        self, client: Redis | RedisCluster | RedisWire, prefix: str = "lt", max_batch: int = 256
    ):
        self._client = client
        self._prefix = f"{prefix}rl:"
        self._dispatch: BatchDispatcher[_Call, Any] = BatchDispatcher(self._send, max_batch)

    @property
    def batches_sent(self) -> int:
        """Pipelines sent so far (a measure of the batching)."""
        return self._dispatch.batches_sent

    def key(self, hit: CounterHit, now_ms: int) -> str:
        """The Redis key counting `hit` in the window holding `now_ms`."""
        domain, _, rest = hit.key.partition(".")
        return f"{self._prefix}{{{domain}}}{rest}_{window_start(hit, now_ms) // 1000}"

    async def hit(self, hits: Sequence[CounterHit], now_ms: int) -> CountStep:
        if not hits:
            return CountStep(True, ())
        keys = tuple(self.key(h, now_ms) for h in hits)
        args: list[str] = [str(len(hits))]
        for h in hits:
            ttl_s = (window_start(h, now_ms) + h.window_ms - now_ms) // 1000 + 1
            args += (str(h.limit), str(h.hits), "1" if h.enforced else "0", str(ttl_s))
        reply = await self._dispatch.submit(_Call(keys, tuple(args)))
        stored = {
            (h.key, window_start(h, now_ms)): int(n)
            for h, n in zip(hits, reply[:-1], strict=True)
            if int(n) >= 0
        }
        step = count_step(hits, stored, now_ms)
        if step.admitted != bool(int(reply[-1])):
            raise RuntimeError("the rate counter script and count_step disagree on a verdict")
        return step

    async def close(self) -> None:
        """Finish the batches in flight and close the connections."""
        await self._dispatch.close()
        if isinstance(self._client, RedisWire):
            await self._client.close()
        else:
            await self._client.aclose()

    async def _send(self, calls: Sequence[_Call]) -> list[Any]:
        if isinstance(self._client, RedisWire):
            return await self._send_wire(self._client, calls)
        try:
            results = await self._pipeline(calls, cached=True)
            missing = [i for i, r in enumerate(results) if isinstance(r, rx.NoScriptError)]
            if missing:  # a restarted server: EVAL sends the text and caches it again
                again = await self._pipeline([calls[i] for i in missing], cached=False)
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
        except (rx.RedisError, rx.RedisClusterException, OSError) as error:
            raise StoreUnavailableError(f"redis: {error}") from error
        return [StoreUnavailableError(f"redis: {r}") if _down(r) else r for r in results]

    async def _pipeline(self, calls: Sequence[_Call], *, cached: bool) -> list[Any]:
        assert not isinstance(self._client, RedisWire)
        pipe = self._client.pipeline(transaction=False)
        for c in calls:
            head = ("EVALSHA", SHA) if cached else ("EVAL", SCRIPT)
            pipe.execute_command(*head, len(c.keys), *c.keys, *c.args)
        # The script answers a list of one reply per request: here, one request per call.
        replies = await pipe.execute(raise_on_error=False)
        return [r if isinstance(r, BaseException) else r[0] for r in replies]

    async def _send_wire(self, wire: RedisWire, calls: Sequence[_Call]) -> list[Any]:
        keys = [k for c in calls for k in c.keys]
        args = [a for c in calls for a in c.args]
        try:
            (reply,) = await wire.execute(_WIRE_SCRIPT.call(keys, args, cached=True), 1)
            if isinstance(reply, rx.NoScriptError):  # a restarted server: EVAL caches it again
                (reply,) = await wire.execute(_WIRE_SCRIPT.call(keys, args, cached=False), 1)
        except (rx.RedisError, OSError) as error:
            raise StoreUnavailableError(f"redis: {error}") from error
        if isinstance(reply, BaseException):  # the whole script failed (BUSY, OOM, ...)
            reply = [reply] * len(calls)
        elif len(reply) != len(calls):
            raise RuntimeError("the rate counter script answered a different number of calls")
        return [StoreUnavailableError(f"redis: {r}") if _down(r) else r for r in reply]


def _down(result: object) -> bool:
    if isinstance(result, _DOWN):
        return True
    return isinstance(result, rx.ResponseError) and str(result).startswith("BUSY")
