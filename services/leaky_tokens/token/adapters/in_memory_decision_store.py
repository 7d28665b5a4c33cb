"""InMemoryDecisionStore: each operation one lock-protected step over the domain functions."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from leaky_tokens.token.adapters.in_process_event_log import InProcessEventLog, usage_event
from leaky_tokens.token.adapters.key_layout import KeyLayout
from leaky_tokens.token.adapters.snapshots import current, levels_of
from leaky_tokens.token.domain import decision as dec
from leaky_tokens.token.domain import quota
from leaky_tokens.token.domain import reservation as res
from leaky_tokens.token.domain.bucket import BucketState
from leaky_tokens.token.domain.decision import Allowed, Denied, Level, Snapshot
from leaky_tokens.token.domain.policy import LevelLimits
from leaky_tokens.token.domain.ports import (
    CreditOutcome,
    DecisionOutcome,
    DecisionRequest,
    EventKind,
    RefundOutcome,
    ReservationIdTakenError,
    ReserveOutcome,
    ReserveRequest,
    RevertOutcome,
    StoredEvent,
    Subject,
    same_request,
)
from leaky_tokens.token.domain.quota import QuotaState
from leaky_tokens.token.domain.reservation import Reservation, Reserved, Settlement

HOUR_MS = 3_600_000


@dataclass(slots=True)
class _Decision:
    subject: Subject
    limits: LevelLimits
    result: Allowed
    expires_ms: int
    ikey: str | None = None  # the idempotency key naming it, forgotten on its refund
    refunded: bool = False


@dataclass(slots=True)
class _Reservation:
    subject: Subject
    limits: LevelLimits
    outcome: Reserved
    held: Reservation
    expires_ms: int | None = None  # of the record, once no longer pending


class InMemoryDecisionStore:
    """The decision store in one process (embedded mode, tests, the emergency budget).

    Record lifetimes (idempotency keys, decisions kept for refunds) run on the callers'
    clock readings, so tests are deterministic. Events wait in one in-process log.
    """

    def __init__(
        self,
        record_ttl_ms: int = HOUR_MS,
        layout: KeyLayout | None = None,
        sweep_limit: int = 16,
    ) -> None:
        self._ttl = record_ttl_ms
        self._sweep_limit = sweep_limit
        self._layout = layout or KeyLayout(shards=1)
        self._lock = threading.Lock()
        self._buckets: dict[str, BucketState] = {}
        self._quotas: dict[str, QuotaState] = {}
        self._decisions: dict[str, _Decision] = {}
        self._reservations: dict[str, _Reservation] = {}
        self._keys: dict[str, tuple[str, int]] = {}  # idempotency key -> (id, expires)
        self._grants: dict[str, tuple[int, int, int]] = {}  # grant -> (balance, expires, tokens)
        self._reverts: dict[str, tuple[int, int, int]] = {}  # grant -> (reverted, exp, balance)
        self._log = InProcessEventLog()

    # --- the port -------------------------------------------------------------------------
    async def decide(self, request: DecisionRequest) -> DecisionOutcome:
        with self._lock:
            return self._decide(request)

    async def refund(
        self, subject: Subject, decision_id: str, tokens: int, now_ms: int, reason: str = ""
    ) -> RefundOutcome:
        with self._lock:
            return self._refund(subject, decision_id, tokens, now_ms, reason)

    async def reserve(self, request: ReserveRequest) -> ReserveOutcome:
        with self._lock:
            return self._reserve(request)

    async def settle(
        self, subject: Subject, reservation_id: str, actual: int, now_ms: int
    ) -> Settlement | None:
        with self._lock:
            self._sweep(now_ms, subject)
            return self._finish(subject, reservation_id, now_ms, actual)

    async def release(
        self, subject: Subject, reservation_id: str, now_ms: int
    ) -> Settlement | None:
        with self._lock:
            self._sweep(now_ms, subject)
            return self._finish(subject, reservation_id, now_ms, None)

    async def credit_balance(
        self, subject: Subject, level: Level, tokens: int, grant_id: str, now_ms: int,
        granted_by: str = "", reason: str = "",
    ) -> CreditOutcome:  # fmt: skip
        _quota_level(subject, level)
        with self._lock:
            self._sweep(now_ms, subject)
            base = self._layout.base_for(subject)
            gkey = self._layout.grant_key(base, grant_id)
            known = self._grants.get(gkey)
            if known is not None and known[1] > now_ms:
                return CreditOutcome(grant_id, known[0], changed=False)
            barred = self._reverts.get(gkey)
            if barred is not None and barred[1] > now_ms:  # reverted first: never credited
                return CreditOutcome(grant_id, barred[2], changed=False)
            key = self._layout.level_key(base, level, subject)
            state = quota.credit(self._quotas.get(key, QuotaState()), tokens)
            self._quotas[key] = state
            self._grants[gkey] = (state.balance, now_ms + self._ttl, tokens)
            self._emit(
                EventKind.CREDITED, grant_id, subject, tokens, now_ms, grant_id, (level,),
                reason or None, granted_by=granted_by,
            )  # fmt: skip
            return CreditOutcome(grant_id, state.balance, changed=True)

    async def revert_credit(
        self, subject: Subject, level: Level, grant_id: str, now_ms: int, reason: str = ""
    ) -> RevertOutcome:
        _quota_level(subject, level)
        with self._lock:
            self._sweep(now_ms, subject)
            base = self._layout.base_for(subject)
            gkey = self._layout.grant_key(base, grant_id)
            done = self._reverts.get(gkey)
            if done is not None and done[1] > now_ms:
                return RevertOutcome(grant_id, done[0], done[2], changed=False)
            key = self._layout.level_key(base, level, subject)
            state = self._quotas.get(key, QuotaState())
            grant = self._grants.get(gkey)
            taken = min(grant[2], state.balance) if grant is not None and grant[1] > now_ms else 0
            state = QuotaState(state.window_start_ms, state.used, state.balance - taken)
            self._quotas[key] = state
            self._reverts[gkey] = (taken, now_ms + self._ttl, state.balance)
            self._emit(
                EventKind.REVERTED, f"{grant_id}:revert", subject, taken, now_ms, grant_id,
                (level,), reason or None,
            )  # fmt: skip
            return RevertOutcome(grant_id, taken, state.balance, changed=True)

    async def read(self, subject: Subject, limits: LevelLimits, now_ms: int) -> Snapshot:
        with self._lock:
            snap = self._snapshot(subject, limits)
        return current(snap, now_ms)

    async def sweep_expired(self, now_ms: int) -> int:
        with self._lock:
            return self._sweep(now_ms)

    @property
    def shard_count(self) -> int:
        return 1

    async def read_events(self, shard: int, after: str, limit: int) -> list[StoredEvent]:
        with self._lock:
            return self._log.read(after, limit)

    async def ack_events(self, shard: int, upto: str) -> int:
        with self._lock:
            return self._log.ack(upto)

    async def pending_events(self, shard: int) -> int:
        """Events recorded and not yet acknowledged (the relay's backlog)."""
        with self._lock:
            return self._log.pending

    # --- one step each ---------------------------------------------------------------------
    def _decide(self, request: DecisionRequest) -> DecisionOutcome:
        now, subject, did = request.now_ms, request.subject, request.decision_id
        self._sweep(now, subject)
        base = self._layout.base_for(subject)
        ikey = self._idem(base, "c", subject, request.idempotency_key)
        earlier = self._known(ikey, now)
        if earlier is not None and (record := self._live_decision(base, earlier, now)):
            same_request(record.subject, record.result.debit.tokens, subject, request.tokens)
            return DecisionOutcome(earlier, record.result, replayed=True)
        snap = self._snapshot(subject, request.limits)
        result = dec.decide(snap, request.tokens, now)
        if isinstance(result, Denied):
            # A denial changed nothing and keeps no key: a retry is decided afresh (ADR 0031).
            self._emit_denial(EventKind.DENIED, did, subject, request.tokens, now, result)
            return DecisionOutcome(did, result)
        self._write(subject, result.snapshot)
        dkey = self._layout.decision_key(base, did)
        if ikey or request.refundable:  # for a refund or a replay; otherwise nothing needs it
            self._decisions[dkey] = _Decision(
                subject, request.limits, result, now + self._ttl, ikey
            )
        if ikey:
            self._keys[ikey] = (did, now + self._ttl)
        levels = levels_of(request.limits)
        self._emit(EventKind.ALLOWED, did, subject, request.tokens, now, did, levels)
        return DecisionOutcome(did, result)

    def _refund(
        self, subject: Subject, decision_id: str, tokens: int, now: int, reason: str
    ) -> RefundOutcome:
        self._sweep(now, subject)
        base = self._layout.base_for(subject)
        record = self._live_decision(base, decision_id, now)
        if record is None or record.refunded or not isinstance(record.result, Allowed):
            return RefundOutcome(decision_id, 0, changed=False)
        debit = record.result.debit
        give = min(tokens, debit.tokens)
        snap = self._snapshot(subject, record.limits)
        self._write(subject, dec.refund(snap, debit, give, now))
        record.refunded = True
        if record.ikey is not None and self._known(record.ikey, now) == decision_id:
            # Nothing was served: the client's retry with the same key is a new decision.
            del self._keys[record.ikey]
        levels = levels_of(record.limits)
        self._emit(
            EventKind.REFUNDED, f"{decision_id}:refund", subject, give, now, decision_id, levels,
            reason or None,
        )  # fmt: skip
        return RefundOutcome(decision_id, give, changed=True)

    def _reserve(self, request: ReserveRequest) -> ReserveOutcome:
        now, subject, rid = request.now_ms, request.subject, request.reservation_id
        self._sweep(now, subject)
        base = self._layout.base_for(subject)
        ikey = self._idem(base, "r", subject, request.idempotency_key)
        earlier = self._known(ikey, now)
        if earlier is not None and (
            first := self._reservations.get(self._layout.reservation_key(base, earlier))
        ):
            same_request(first.subject, first.held.estimate, subject, request.estimate)
            return ReserveOutcome(earlier, first.outcome, replayed=True)
        rkey = self._layout.reservation_key(base, rid)
        known = self._reservations.get(rkey)
        if known is not None and known.subject == subject:
            return ReserveOutcome(rid, known.outcome, replayed=True)
        if known is not None:
            raise ReservationIdTakenError(rid)
        snap = self._snapshot(subject, request.limits)
        result = res.reserve(snap, rid, request.estimate, now, request.ttl_ms)
        if isinstance(result, Denied):
            # Nothing held and no key kept: a retry is decided afresh (ADR 0031).
            self._emit_denial(EventKind.RESERVE_DENIED, rid, subject, request.estimate, now, result)
            return ReserveOutcome(rid, result)
        self._write(subject, result.snapshot)
        self._reservations[rkey] = _Reservation(subject, request.limits, result, result.reservation)
        if ikey:
            self._keys[ikey] = (rid, now + self._ttl)
        self._emit(
            EventKind.RESERVED, rid, subject, request.estimate, now, rid,
            levels_of(request.limits), expires_at_ms=result.reservation.expires_at_ms,
        )  # fmt: skip
        return ReserveOutcome(rid, result)

    def _finish(
        self, subject: Subject, rid: str, now: int, actual: int | None, why: str | None = None
    ) -> Settlement | None:
        rkey = self._layout.reservation_key(self._layout.base_for(subject), rid)
        record = self._reservations.get(rkey)
        if record is None or record.subject != subject:
            return None
        snap = self._snapshot(subject, record.limits)
        if actual is None:
            done = res.release(snap, record.held, now)
        else:
            done = res.settle(snap, record.held, actual, now)
        if not done.changed:
            return done
        self._write(subject, done.snapshot)
        record.held, record.expires_ms = done.reservation, now + self._ttl
        levels = levels_of(record.limits)
        if actual is None:
            self._emit(
                EventKind.RELEASED, f"{rid}:release", subject, done.refunded, now, rid, levels, why
            )
        else:
            self._emit(
                EventKind.SETTLED, f"{rid}:settle", subject, actual, now, rid, levels, None,
                done.reservation.overage, estimate=done.reservation.estimate,
            )  # fmt: skip
        return done

    # --- shared steps ----------------------------------------------------------------------
    def _sweep(self, now: int, caller: Subject | None = None) -> int:
        # A call sweeps its own shard (as each Redis script does); sweep_expired all of them.
        base = None if caller is None else self._layout.base_for(caller)
        records = [
            r
            for r in self._reservations.values()
            if base is None or self._layout.base_for(r.subject) == base
        ]
        # In deadline order, then by id, at most `sweep_limit` per call: as the scripts do.
        due = sorted(res.expire((r.held for r in records), now), key=_deadline)
        if caller is not None:
            due = due[: self._sweep_limit]
        by_id = {r.held.id: r for r in records}
        for expired in due:
            record = by_id[expired.id]
            self._finish(record.subject, expired.id, now, None, "expired")
        self._forget(now)
        return len(due)

    def _forget(self, now: int) -> None:
        # Records past their lifetime go, as Redis expires them (PEXPIRE).
        for dkey in [k for k, d in self._decisions.items() if d.expires_ms <= now]:
            del self._decisions[dkey]
        done = [k for k, r in self._reservations.items() if (r.expires_ms or now + 1) <= now]
        for rkey in done:
            del self._reservations[rkey]
        for table in (self._keys, self._grants, self._reverts):
            for key in [k for k, v in table.items() if v[1] <= now]:
                del table[key]

    def _emit(self, *args: Any, **details: Any) -> None:
        self._log.append(usage_event(*args, **details))

    def _emit_denial(
        self, kind: EventKind, did: str, subject: Subject, tokens: int, now: int, denied: Denied
    ) -> None:
        refused = tuple(x.level for x in denied.limiting)
        self._emit(
            kind, did, subject, tokens, now, did, refused, denied.reason.value,
            statuses=denied.statuses, limiting=denied.limiting,
        )  # fmt: skip

    def _idem(self, base: str, op: str, subject: Subject, key: str | None) -> str | None:
        return self._layout.idempotency_key(base, op, subject, key) if key else None

    def _known(self, ikey: str | None, now: int) -> str | None:
        found = self._keys.get(ikey) if ikey else None
        return found[0] if found is not None and found[1] > now else None

    def _live_decision(self, base: str, decision_id: str, now: int) -> _Decision | None:
        record = self._decisions.get(self._layout.decision_key(base, decision_id))
        return record if record is not None and record.expires_ms > now else None

    def _snapshot(self, subject: Subject, limits: LevelLimits) -> Snapshot:
        base = self._layout.base_for(subject)
        key = self._layout.level_key
        buckets = {
            lv: self._buckets.get(key(base, lv, subject), BucketState()) for lv in limits.buckets
        }
        quotas = {
            lv: self._quotas.get(key(base, lv, subject), QuotaState()) for lv in limits.quotas
        }
        return limits.snapshot(buckets, quotas)

    def _write(self, subject: Subject, snap: Snapshot) -> None:
        base = self._layout.base_for(subject)
        for lv, slot in snap.buckets.items():
            self._buckets[self._layout.level_key(base, lv, subject)] = slot.state
        for lv, qslot in snap.quotas.items():
            self._quotas[self._layout.level_key(base, lv, subject)] = qslot.state


def _deadline(held: Reservation) -> tuple[int, bytes]:
    return held.expires_at_ms, held.id.encode()


def _quota_level(subject: Subject, level: Level) -> None:
    if level not in dec.QUOTA_LEVELS or (level is Level.ORG_QUOTA and not subject.org_id):
        raise ValueError(f"a balance is credited to a quota level, not {level}")
