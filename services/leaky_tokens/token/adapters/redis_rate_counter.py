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
from leaky_tokens.token.adapters.redis_wire import RedisWire, bulk
from leaky_tokens.token.domain.ports import StoreUnavailableError
from leaky_tokens.token.domain.rate_counter import CounterHit, CountStep, count_step, window_start

SCRIPT = (files("leaky_tokens.token.adapters") / "lua" / "rate_counter.lua").read_text()
SHA = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()
_CALLS_CACHED = 4096  # plans whose call of this second is kept
_OVER_KEPT = 4096  # plans remembered over their limit until a window ends (ADR 0046)
_HEADS = (b"$7\r\nEVALSHA\r\n" + bulk(SHA.encode()), b"$4\r\nEVAL\r\n" + bulk(SCRIPT.encode()))
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
    packed_keys: bytes  # the keys as RESP bulk strings, and the arguments (RedisWire)
    packed_args: bytes


@dataclass(frozen=True, slots=True)
class _Over:
    """A plan refused with every hit over its limit, valid from `since` to `until` (ms)."""

    hits: Sequence[CounterHit]  # the plan's own tuple (kept alive: its id stays its key)
    since: int
    until: int
    stored: dict[tuple[str, int], int]


def _packed(values: Sequence[str]) -> bytes:
    return b"".join([bulk(v.encode()) for v in values])


def _script_call(head: bytes, calls: Sequence[_Call]) -> bytes:
    """One EVALSHA/EVAL of the batch script over `calls`, from their packed parts."""
    keys = sum(len(c.keys) for c in calls)
    size = 3 + keys + sum(len(c.args) for c in calls)
    keys_part = b"".join([c.packed_keys for c in calls])
    args_part = b"".join([c.packed_args for c in calls])
    return b"*%d\r\n%b%b%b%b" % (size, head, bulk(b"%d" % keys), keys_part, args_part)


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
        self,
        client: Redis | RedisCluster | RedisWire,
        prefix: str = "lt",
        max_batch: int = 256,
        max_inflight: int | None = 1,
        min_interval_s: float = 0.0,
    ):
        self._client = client
        self._prefix = f"{prefix}rl:"
        # One batch in flight, and (min_interval_s) flushes spaced while busy: requests
        # arriving meanwhile leave together (grpc.aio starts RPCs one loop turn each, so
        # batches left alone carry one request each; ADR 0034).
        self._dispatch: BatchDispatcher[_Call, Any] = BatchDispatcher(
            self._send, max_batch, max_inflight, min_interval_s
        )
        # A request's keys and arguments change only with the second (window start, TTL):
        # built once per second per plan (its `hits` tuple, kept alive by the entry, so its
        # id is not reused meanwhile). Bounded; cleared when full.
        self._calls: dict[int, tuple[Sequence[CounterHit], int, _Call]] = {}
        # Plans Redis answered "every hit over its limit" for, with the counts read and the
        # span their windows share. Counts only grow within a window and a refusal counts
        # nothing, so until the first of those windows ends the answer is the same again,
        # computed here (ADR 0046; upstream's local over-limit cache).
        self._over: dict[int, _Over] = {}

    def space_batches(self, seconds: float) -> None:
        """Flush at most every `seconds` while busy (0: at once); see BatchDispatcher."""
        self._dispatch.space(seconds)

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
        over = self._over.get(id(hits))
        if over is not None and over.hits is hits and over.since <= now_ms < over.until:
            return count_step(hits, over.stored, now_ms)
        reply = await self._dispatch.submit(self._call(hits, now_ms))
        stored = {
            (h.key, window_start(h, now_ms)): int(n)
            for h, n in zip(hits, reply[:-1], strict=True)
            if int(n) >= 0
        }
        step = count_step(hits, stored, now_ms)
        if step.admitted != bool(int(reply[-1])):
            raise RuntimeError("the rate counter script and count_step disagree on a verdict")
        if not step.admitted and not any(w.within for w in step.hits):
            self._remember_over(hits, stored, now_ms)
        return step

    def _remember_over(
        self, hits: Sequence[CounterHit], stored: dict[tuple[str, int], int], now_ms: int
    ) -> None:
        """Keep a refusal whose every hit is over its limit until the first window ends.

        Exact, not a guess: the counts read are lower bounds of the counts later (only
        admitted requests add, and only to their own windows), so every hit stays over and
        the request stays refused with nothing counted; count_step recomputes the remaining
        counts (0) and the time to each reset at every call. A refusal with a hit still
        within its limit is not kept (its remaining count would be stale).
        """
        if len(self._over) >= _OVER_KEPT:
            self._over.clear()
        starts = [window_start(h, now_ms) for h in hits]
        ends = [start + h.window_ms for h, start in zip(hits, starts, strict=True)]
        # Between the last window start and the first window end every hit is in the window
        # its count was read in (a clock stepped back before it goes to Redis again).
        self._over[id(hits)] = _Over(hits, max(starts), min(ends), stored)

    def _call(self, hits: Sequence[CounterHit], now_ms: int) -> _Call:
        second = now_ms // 1000
        found = self._calls.get(id(hits))
        if found is not None and found[0] is hits and found[1] == second:
            return found[2]
        keys = tuple(self.key(h, now_ms) for h in hits)
        args: list[str] = [str(len(hits))]
        for h in hits:
            ttl_s = (window_start(h, now_ms) + h.window_ms - now_ms) // 1000 + 1
            args += (str(h.limit), str(h.hits), "1" if h.enforced else "0", str(ttl_s))
        call = _Call(keys, tuple(args), _packed(keys), _packed(args))
        # Whole-second windows only (every rule's unit is): then the call is the same for
        # the whole second.
        if all(h.window_ms % 1000 == 0 for h in hits):
            if len(self._calls) >= _CALLS_CACHED:
                self._calls.clear()
            self._calls[id(hits)] = (hits, second, call)
        return call

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
        try:
            (reply,) = await wire.execute(_script_call(_HEADS[0], calls), 1)
            if isinstance(reply, rx.NoScriptError):  # a restarted server: EVAL caches it again
                (reply,) = await wire.execute(_script_call(_HEADS[1], calls), 1)
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
