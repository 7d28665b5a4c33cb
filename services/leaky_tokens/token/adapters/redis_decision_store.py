"""RedisDecisionStore: one Lua script per operation, calls batched into pipelines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from redis import exceptions as rx
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from leaky_tokens.token.adapters import redis_codec as codec
from leaky_tokens.token.adapters.key_layout import RS, SEP, KeyLayout
from leaky_tokens.token.adapters.redis_dispatcher import BatchDispatcher
from leaky_tokens.token.adapters.redis_errors import mapped as _mapped
from leaky_tokens.token.adapters.redis_errors import unavailable as _unavailable
from leaky_tokens.token.adapters.redis_event_log import RedisEventLog
from leaky_tokens.token.adapters.redis_scripts import Script, load_scripts
from leaky_tokens.token.adapters.redis_wire import RedisWire, WireScript, run_scripts
from leaky_tokens.token.adapters.snapshots import current
from leaky_tokens.token.domain import decision as dec
from leaky_tokens.token.domain import reservation as res
from leaky_tokens.token.domain.decision import Allowed, Level, Snapshot
from leaky_tokens.token.domain.policy import LevelLimits
from leaky_tokens.token.domain.ports import (
    CreditOutcome,
    DecisionOutcome,
    DecisionRequest,
    RefundOutcome,
    ReservationIdTakenError,
    ReserveOutcome,
    ReserveRequest,
    RevertOutcome,
    StoredEvent,
    StoreUnavailableError,
    Subject,
    same_request,
)
from leaky_tokens.token.domain.reservation import ReservationStatus, Reserved, Settlement

Client = Redis | RedisCluster
HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class _Call:
    script: Script
    stream: str
    args: tuple[str, ...]


class RedisDecisionStore:
    """The decision store on Redis or a Redis Cluster (every script stays on one slot).

    The caller's clock reading is the time (ADR 0021): the scripts never go back in time
    (a bucket leaks nothing for an older reading, a window never rolls back). Record TTLs
    (decisions kept for refunds, idempotency keys) run on the server's clock.
    """

    def __init__(
        self,
        client: Client,
        layout: KeyLayout | None = None,
        *,
        record_ttl_ms: int = HOUR_MS,
        sweep_limit: int = 16,
        max_batch: int = 256,
        wire: RedisWire | None = None,
        events_wire: RedisWire | None = None,
    ) -> None:
        self._client = client
        # Script calls over the dedicated RESP client when given (single Redis; ADR 0028).
        self._wire = wire
        self._layout = layout or KeyLayout()
        self._ttl = str(record_ttl_ms)
        self._sweep_limit = str(sweep_limit)
        self._scripts = load_scripts()
        self._wired = {s.name: WireScript(s.sha, s.text) for s in self._scripts.values()}
        self._dispatch: BatchDispatcher[_Call, Any] = BatchDispatcher(self._send, max_batch)
        # The relay's reads on a connection of their own (ADR 0035).
        self._events_wire = events_wire
        self._events = RedisEventLog(client, self._layout, events_wire)

    @property
    def batches_sent(self) -> int:
        """Pipelines sent so far (a measure of the batching)."""
        return self._dispatch.batches_sent

    async def load_scripts(self) -> None:
        """SCRIPT LOAD every script (on every primary of a cluster); EVALSHA then hits."""
        try:
            for script in self._scripts.values():
                await self._client.script_load(script.text)
        except (rx.RedisError, rx.RedisClusterException) as error:
            raise _mapped(error) from error

    async def close(self) -> None:
        """Finish the batches in flight and close the connections."""
        await self._dispatch.close()
        if self._wire is not None:
            await self._wire.close()
        if self._events_wire is not None:
            await self._events_wire.close()
        await self._client.aclose()

    # --- the port -------------------------------------------------------------------------
    async def decide(self, request: DecisionRequest) -> DecisionOutcome:
        s = request.subject
        base = self._layout.base_for(s)
        ikey = self._idem(base, "c", s, request.idempotency_key)
        spec = codec.level_spec(self._layout, base, s, request.limits)
        self._layout.decision_key(base, request.decision_id)  # validates the id
        keep = "1" if request.refundable else "0"
        args = (request.decision_id, ikey, str(request.tokens), spec, keep)
        reply = await self._run("decide", base, s, request.now_ms, *args)
        replayed, text = int(reply[0]), reply[1]
        if replayed < 0:
            _refuse_reuse(reply, s, request.tokens)
        did = _str(reply[2])
        rec = codec.record(text)
        result = dec.decide(rec.before, rec.tokens, rec.now_ms)
        _agree(isinstance(result, Allowed), rec.allowed)
        return DecisionOutcome(did, result, replayed=bool(replayed))

    async def refund(
        self, subject: Subject, decision_id: str, tokens: int, now_ms: int, reason: str = ""
    ) -> RefundOutcome:
        base = self._layout.base_for(subject)
        self._layout.decision_key(base, decision_id)
        _check_text(reason)
        args = (decision_id, str(tokens), reason)
        given = int(await self._run("refund", base, subject, now_ms, *args))
        return RefundOutcome(decision_id, max(0, given), changed=given >= 0)

    async def reserve(self, request: ReserveRequest) -> ReserveOutcome:
        s, rid = request.subject, request.reservation_id
        base = self._layout.base_for(s)
        self._layout.reservation_key(base, rid)
        ikey = self._idem(base, "r", s, request.idempotency_key)
        spec = codec.level_spec(self._layout, base, s, request.limits)
        args = (rid, ikey, str(request.estimate), spec, str(request.ttl_ms))
        reply = await self._run("reserve", base, s, request.now_ms, *args)
        if int(reply[0]) == -2:
            _refuse_reuse(reply, s, request.estimate)
        if int(reply[0]) < 0:
            raise ReservationIdTakenError(rid)
        replayed, text, found = int(reply[0]), reply[1], _str(reply[2])
        rec = codec.record(text)
        result = res.reserve(rec.before, found, rec.tokens, rec.now_ms, rec.ttl_ms)
        _agree(isinstance(result, Reserved), rec.allowed)
        return ReserveOutcome(found, result, replayed=bool(replayed))

    async def settle(
        self, subject: Subject, reservation_id: str, actual: int, now_ms: int
    ) -> Settlement | None:
        return await self._finish(subject, reservation_id, now_ms, actual)

    async def release(
        self, subject: Subject, reservation_id: str, now_ms: int
    ) -> Settlement | None:
        return await self._finish(subject, reservation_id, now_ms, None)

    async def credit_balance(
        self, subject: Subject, level: Level, tokens: int, grant_id: str, now_ms: int,
        granted_by: str = "", reason: str = "",
    ) -> CreditOutcome:  # fmt: skip
        if level not in dec.QUOTA_LEVELS or (level is Level.ORG_QUOTA and not subject.org_id):
            raise ValueError(f"a balance is credited to a quota level, not {level}")
        base = self._layout.base_for(subject)
        self._layout.grant_key(base, grant_id)
        key = self._layout.level_key(base, level, subject)
        _check_text(granted_by, reason)
        args = (grant_id, key, str(tokens), level.value, granted_by, reason)
        try:
            reply = await self._run("credit", base, subject, now_ms, *args)
        except rx.ResponseError as error:
            raise ValueError(str(error)) from error
        return CreditOutcome(grant_id, int(reply[1]), changed=bool(int(reply[0])))

    async def revert_credit(
        self, subject: Subject, level: Level, grant_id: str, now_ms: int, reason: str = ""
    ) -> RevertOutcome:
        if level not in dec.QUOTA_LEVELS or (level is Level.ORG_QUOTA and not subject.org_id):
            raise ValueError(f"a balance is credited to a quota level, not {level}")
        base = self._layout.base_for(subject)
        self._layout.grant_key(base, grant_id)
        _check_text(reason)
        args = (grant_id, self._layout.level_key(base, level, subject), level.value, reason)
        reply = await self._run("revert", base, subject, now_ms, *args)
        return RevertOutcome(grant_id, int(reply[1]), int(reply[2]), changed=bool(int(reply[0])))

    async def read(self, subject: Subject, limits: LevelLimits, now_ms: int) -> Snapshot:
        base = self._layout.base_for(subject)
        spec = codec.level_spec(self._layout, base, subject, limits)
        states = await self._run("read", base, subject, now_ms, spec)
        return current(codec.snapshot(codec.spec_fields(spec), codec.states_fields(states)), now_ms)

    async def sweep_expired(self, now_ms: int) -> int:
        # One pipeline over every shard, again for the shards that hit the per-call limit.
        bases = [self._layout.base(i) for i in range(self._layout.shards)]
        total = 0
        while bases:
            done = await self._send([self._call("sweep", base, "", now_ms) for base in bases])
            for item in done:
                if isinstance(item, BaseException):
                    raise item
            counts = [int(x) for x in done]
            total += sum(counts)
            bases = [b for b, c in zip(bases, counts, strict=True) if c >= int(self._sweep_limit)]
        return total

    @property
    def shard_count(self) -> int:
        return self._layout.shards

    async def read_events(self, shard: int, after: str, limit: int) -> list[StoredEvent]:
        return await self._events.read(shard, after, limit)

    async def ack_events(self, shard: int, upto: str) -> int:
        return await self._events.ack(shard, upto)

    async def pending_events(self, shard: int) -> int:
        """Events recorded and not yet acknowledged (acks trim the stream, so its length)."""
        return await self._events.pending(shard)

    async def read_events_batch(
        self, shards: Sequence[int], limit: int
    ) -> list[list[StoredEvent] | BaseException]:
        """`read_events(shard, "", limit)` of every shard given, in one round trip."""
        return await self._events.read_batch(shards, limit)

    async def ack_events_batch(self, acks: Sequence[tuple[int, str]]) -> list[int | BaseException]:
        """`ack_events` of every (shard, upto) given, in one round trip."""
        return await self._events.ack_batch(acks)

    # --- calls ------------------------------------------------------------------------------
    async def _finish(
        self, subject: Subject, rid: str, now_ms: int, actual: int | None
    ) -> Settlement | None:
        base = self._layout.base_for(subject)
        self._layout.reservation_key(base, rid)
        wanted = "" if actual is None else str(actual)
        reply = await self._run("settle", base, subject, now_ms, rid, wanted)
        code = int(reply[0])
        if code < 0:
            return None
        rec = codec.record(reply[1])
        reserved = res.reserve(rec.before, rid, rec.tokens, rec.now_ms, rec.ttl_ms)
        if not isinstance(reserved, Reserved):
            raise codec.StoreInconsistencyError(f"reservation {rid} was stored as a denial")
        held = reserved.reservation
        states = codec.restated(rec.before, codec.states_fields(reply[5]))
        if code == 0:
            done = replace(
                held,
                status=ReservationStatus(_str(reply[2])),
                actual=int(reply[3]),
                overage=codec.overage(reply[4]),
            )
            return Settlement(states, done, changed=False)
        if actual is None:
            return res.release(states, held, now_ms)
        return res.settle(states, held, actual, now_ms)

    def _idem(self, base: str, op: str, subject: Subject, key: str | None) -> str:
        return self._layout.idempotency_key(base, op, subject, key) if key else ""

    def _call(self, op: str, base: str, who: str, now_ms: int, *args: str) -> _Call:
        # One argument for the whole call: encoding each of a dozen arguments separately
        # was the largest client-side cost per decision (the script splits it again).
        packed = RS.join((base, str(now_ms), self._sweep_limit, self._ttl, who, *args))
        return _Call(self._scripts[op], base + "ev", (packed,))

    async def _run(self, op: str, base: str, subject: Subject, now_ms: int, *args: str) -> Any:
        return await self._dispatch.submit(self._call(op, base, codec.who(subject), now_ms, *args))

    async def _send(self, calls: Sequence[_Call]) -> list[Any]:
        try:
            results = await self._pipeline(calls, cached=True)
            missing = [i for i, r in enumerate(results) if isinstance(r, rx.NoScriptError)]
            if missing:  # a restarted or failed-over server: EVAL sends the text and caches it
                again = await self._pipeline([calls[i] for i in missing], cached=False)
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
        except (rx.RedisError, rx.RedisClusterException) as error:
            raise _mapped(error) from error
        except OSError as error:
            raise StoreUnavailableError(f"redis: {error}") from error
        return [_mapped(r) if _unavailable(r) else r for r in results]

    async def _pipeline(self, calls: Sequence[_Call], *, cached: bool) -> list[Any]:
        if self._wire is not None:
            batch = [(self._wired[c.script.name], (c.stream,), c.args) for c in calls]
            return await run_scripts(self._wire, batch, cached=cached)
        pipe = self._client.pipeline(transaction=False)
        for c in calls:
            # execute_command: redis-py's cluster pipeline blocks its evalsha() helper, yet
            # routes EVALSHA by its key like any command (every key here shares one slot).
            if cached:
                pipe.execute_command("EVALSHA", c.script.sha, 1, c.stream, *c.args)
            else:
                pipe.execute_command("EVAL", c.script.text, 1, c.stream, *c.args)
        return list(await pipe.execute(raise_on_error=False))


def _check_text(*texts: str) -> None:
    # Free text travels in the packed script argument, whose separators it must not hold.
    if any(sep in text for text in texts for sep in (RS, SEP)):
        raise ValueError("a reason or name must not contain \\x1e or \\x1f")


def _refuse_reuse(reply: Sequence[Any], subject: Subject, tokens: int) -> None:
    """A key first used for another request: the script returned that request's subject."""
    first = codec.subject_of(reply[1])
    same_request(first, int(reply[2]) if len(reply) > 2 else -1, subject, tokens)
    raise codec.StoreInconsistencyError("the script refused a key reuse the domain accepts")


def _agree(domain_allowed: bool, script_allowed: bool) -> None:
    if domain_allowed != script_allowed:
        raise codec.StoreInconsistencyError("the Lua port and the domain disagree on a verdict")


def _str(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
