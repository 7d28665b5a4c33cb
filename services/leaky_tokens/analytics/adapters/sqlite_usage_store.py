"""The UsageStore on SQLite (embedded mode, ADR 0038): raw events, rollups maintained as facts
arrive, purchases' latest states, and the source positions, all in one transaction per batch."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from leaky_tokens.analytics.adapters.usage_schema import (
    dead_letters,
    purchase_views,
    source_positions,
    usage_raw,
    usage_rollup_users,
    usage_rollups,
)
from leaky_tokens.analytics.domain.facts import (
    FactKind,
    PurchaseFact,
    PurchaseState,
    SourcedFact,
    UsageFact,
)
from leaky_tokens.analytics.domain.ports import (
    PurchaseTotals,
    PurchaseView,
    Scope,
    ScopeKind,
    UsageStoreUnavailableError,
    scopes_of,
)
from leaky_tokens.analytics.domain.totals import Totals, UserShare
from leaky_tokens.analytics.domain.windows import RESOLUTIONS, Resolution
from leaky_tokens.runtime import sql

MIGRATIONS = Path(__file__).with_name("usage_migrations")
_PG_LOCK_ID = 0xA11A_1175  # unused on SQLite; sql.migrate wants one
_CHUNK = 500  # event ids per IN (...) lookup
_DECISIONS = [FactKind.CONSUME.value, FactKind.RESERVE.value]
Position = tuple[str, int]  # (topic, partition)
_BucketKey = tuple[str, str, str, int, int]  # scope kind, scope id, provider, resolution, start


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that can never be projected, where it was read, and why."""

    topic: str
    partition: int
    offset: int
    reason: str
    value: bytes


async def open_sqlite_usage_store(
    url: str,
    *,
    raw_ttl_seconds: float,
    now_ms: Callable[[], int] | None = None,
    auto_migrate: bool = True,
) -> SqliteUsageStore:
    """A store on the SQLite database at `url` (sqlite+aiosqlite:///...), migrated first."""
    engine = sql.make_engine(url)
    if auto_migrate:
        await sql.migrate(engine, MIGRATIONS, _PG_LOCK_ID)
    return SqliteUsageStore(engine, raw_ttl_ms=int(raw_ttl_seconds * 1000), now_ms=now_ms)


@sql.unavailable_on_outage("analytics", UsageStoreUnavailableError)
class SqliteUsageStore:
    """UsageStore over SQLite. Writers are serialised by BEGIN IMMEDIATE (one projection at a
    time, queries read beside it under WAL).

    `project` inserts each usage fact's raw row by event id, skipping ids already there; only
    the new ones are added to the rollups (every scope of `scopes_of`, every resolution, each
    user's share), and the highest offset per (topic, partition) is recorded, all in one
    transaction: a replay changes nothing. Raw rows expire `raw_ttl_ms` after they were
    projected (`expire_raw`); rollups are kept. A duplicate arriving after its raw row expired
    would count again, so the TTL must outlast any redelivery (the log's retention).
    A USER scope's bucket keeps no per-user rows: its only user's share is the bucket's own
    events and tokens.
    """

    def __init__(
        self, engine: AsyncEngine, *, raw_ttl_ms: int, now_ms: Callable[[], int] | None = None
    ) -> None:
        self._engine = engine
        self._ttl_ms = raw_ttl_ms
        self._now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)

    # --- write side -----------------------------------------------------------------------
    async def project(self, facts: Sequence[SourcedFact]) -> None:
        positions: dict[Position, int] = {}
        for sourced in facts:
            key = (sourced.topic, sourced.partition)
            positions[key] = max(positions.get(key, -1), sourced.offset)
        await self.apply(facts, (), positions)

    async def apply(
        self,
        facts: Sequence[SourcedFact],
        dead: Sequence[DeadLetter],
        positions: Mapping[Position, int],
    ) -> None:
        """Project `facts`, record `dead` letters and move each source's position to at least
        the offset given, in one transaction (the tailer's batch: facts, poison, ignored)."""
        usage = [s.fact for s in facts if isinstance(s.fact, UsageFact)]
        bought = [s.fact for s in facts if isinstance(s.fact, PurchaseFact)]
        async with self._engine.begin() as conn:
            fresh = await self._new_usage(conn, usage)
            if fresh:
                await self._insert_raw(conn, fresh)
                await self._add_to_rollups(conn, fresh)
            if bought:
                await self._apply_purchases(conn, bought)
            if dead:
                await self._record_dead(conn, dead)
            if positions:
                stmt = insert(source_positions)
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["topic", "partition"],
                        set_={
                            "offset": sa.func.max(source_positions.c.offset, stmt.excluded.offset)
                        },
                    ),
                    [{"topic": t, "partition": p, "offset": o} for (t, p), o in positions.items()],
                )

    async def rewind(self, topic: str, partition: int = 0) -> None:
        """Forget the position of (topic, partition): its source starts again from 0 (the
        event log file was replaced; what it replays again is de-duplicated by event id)."""
        async with self._engine.begin() as conn:
            await conn.execute(
                source_positions.delete().where(
                    source_positions.c.topic == topic, source_positions.c.partition == partition
                )
            )

    async def position(self, topic: str, partition: int = 0) -> int:
        """The highest offset of (topic, partition) projected so far (0: none)."""
        query = sa.select(source_positions.c.offset).where(
            source_positions.c.topic == topic, source_positions.c.partition == partition
        )
        async with self._read() as conn:
            found = (await conn.execute(query)).scalar()
        return int(found) if found is not None else 0

    async def expire_raw(self) -> int:
        """Delete the raw rows whose TTL passed; how many. Rollups are untouched."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                usage_raw.delete().where(usage_raw.c.expires_at_ms <= self._now_ms())
            )
        return int(result.rowcount)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The dead letters recorded, oldest first (operators and tests)."""
        query = sa.select(dead_letters).order_by(dead_letters.c.id).limit(limit)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return [DeadLetter(r.topic, r.partition, r.offset, r.reason, bytes(r.value)) for r in rows]

    async def raw_count(self) -> int:
        """How many raw usage rows are kept (operators and tests)."""
        async with self._read() as conn:
            return int(
                (await conn.execute(sa.select(sa.func.count()).select_from(usage_raw))).scalar_one()
            )

    # --- read side ------------------------------------------------------------------------
    async def latest(self, scope: Scope, provider: str, limit: int) -> list[UsageFact]:
        if limit <= 0:
            return []
        query = sa.select(usage_raw).where(
            usage_raw.c.provider == provider, usage_raw.c.kind.in_(_DECISIONS)
        )
        if scope.kind is ScopeKind.USER:
            query = query.where(usage_raw.c.user_id == scope.id)
        elif scope.kind is ScopeKind.ORG:
            query = query.where(usage_raw.c.org_id == scope.id)
        query = query.order_by(
            usage_raw.c.occurred_at_ms.desc(), usage_raw.c.event_id.desc()
        ).limit(limit)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            UsageFact(
                event_id=r.event_id,
                occurred_at_ms=r.occurred_at_ms,
                kind=FactKind(r.kind),
                provider=r.provider,
                user_id=r.user_id,
                org_id=r.org_id,
                tokens=r.tokens,
                allowed=bool(r.allowed),
            )
            for r in rows
        ]

    async def buckets(
        self, scope: Scope, provider: str, resolution: Resolution, starts: Sequence[int]
    ) -> Mapping[int, Totals]:
        if not starts:
            return {}
        r, u = usage_rollups, usage_rollup_users
        joined = r.outerjoin(
            u,
            sa.and_(
                u.c.scope_kind == r.c.scope_kind,
                u.c.scope_id == r.c.scope_id,
                u.c.provider == r.c.provider,
                u.c.resolution_ms == r.c.resolution_ms,
                u.c.bucket_ms == r.c.bucket_ms,
            ),
        )
        query = (
            sa.select(
                r.c.bucket_ms,
                r.c.events,
                r.c.allowed_events,
                r.c.tokens,
                r.c.allowed_tokens,
                r.c.refunded_tokens,
                u.c.user_id,
                u.c.tokens.label("user_tokens"),
                u.c.events.label("user_events"),
            )
            .select_from(joined)
            .where(
                r.c.scope_kind == scope.kind.value,
                r.c.scope_id == scope.id,
                r.c.provider == provider,
                r.c.resolution_ms == resolution.value,
                r.c.bucket_ms.in_(sorted(set(starts))),
            )
        )
        out: dict[int, Totals] = {}
        async with self._read() as conn:
            for row in await conn.execute(query):
                totals = out.get(row.bucket_ms)
                if totals is None:
                    totals = out[row.bucket_ms] = Totals(
                        events=row.events,
                        allowed_events=row.allowed_events,
                        tokens=row.tokens,
                        allowed_tokens=row.allowed_tokens,
                        refunded_tokens=row.refunded_tokens,
                    )
                    if scope.kind is ScopeKind.USER and row.events:
                        totals.users[scope.id] = UserShare(row.tokens, row.events)
                if row.user_id is not None:
                    totals.users[row.user_id] = UserShare(row.user_tokens, row.user_events)
        return out

    async def providers(self, scope: Scope) -> list[str]:
        query = (
            sa.select(usage_rollups.c.provider)
            .distinct()
            .where(
                usage_rollups.c.scope_kind == scope.kind.value,
                usage_rollups.c.scope_id == scope.id,
                usage_rollups.c.resolution_ms == Resolution.DAY.value,
            )
            .order_by(usage_rollups.c.provider)
        )
        async with self._read() as conn:
            return [str(p) for p in (await conn.execute(query)).scalars()]

    async def purchases(self, scope: Scope, limit: int) -> list[PurchaseView]:
        if limit <= 0:
            return []
        query = _scoped(sa.select(purchase_views), scope).order_by(
            purchase_views.c.created_at_ms.desc(), purchase_views.c.saga_id.desc()
        )
        async with self._read() as conn:
            rows = (await conn.execute(query.limit(limit))).all()
        return [
            PurchaseView(
                saga_id=r.saga_id,
                user_id=r.user_id,
                org_id=r.org_id,
                provider=r.provider,
                tokens=r.tokens,
                state=PurchaseState(r.state),
                reason=r.reason,
                created_at_ms=r.created_at_ms,
                updated_at_ms=r.updated_at_ms,
            )
            for r in rows
        ]

    async def purchase_totals(self, scope: Scope) -> PurchaseTotals:
        p = purchase_views
        completed = p.c.state == PurchaseState.COMPLETED.value
        failed = p.c.state == PurchaseState.FAILED.value
        query = _scoped(
            sa.select(
                sa.func.count().filter(completed),
                sa.func.coalesce(sa.func.sum(p.c.tokens).filter(completed), 0),
                sa.func.count().filter(failed),
            ),
            scope,
        )
        async with self._read() as conn:
            row = (await conn.execute(query)).one()
        return PurchaseTotals(int(row[0]), int(row[1]), int(row[2]))

    async def close(self) -> None:
        await self._engine.dispose()

    # --- helpers --------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as conn:
            yield await conn.execution_options(**{sql.READ_ONLY: True})

    async def _new_usage(self, conn: AsyncConnection, usage: list[UsageFact]) -> list[UsageFact]:
        """The facts whose event id is neither stored nor earlier in this batch."""
        ids = list(dict.fromkeys(f.event_id for f in usage))
        known: set[str] = set()
        for i in range(0, len(ids), _CHUNK):
            query = sa.select(usage_raw.c.event_id).where(
                usage_raw.c.event_id.in_(ids[i : i + _CHUNK])
            )
            known.update((await conn.execute(query)).scalars())
        fresh = []
        for fact in usage:
            if fact.event_id not in known:
                known.add(fact.event_id)
                fresh.append(fact)
        return fresh

    async def _insert_raw(self, conn: AsyncConnection, fresh: list[UsageFact]) -> None:
        expires = self._now_ms() + self._ttl_ms
        await conn.execute(
            usage_raw.insert(),
            [
                {
                    "event_id": f.event_id,
                    "occurred_at_ms": f.occurred_at_ms,
                    "kind": f.kind.value,
                    "decision": f.kind.is_decision,
                    "provider": f.provider,
                    "user_id": f.user_id,
                    "org_id": f.org_id,
                    "tokens": f.tokens,
                    "allowed": f.allowed,
                    "expires_at_ms": expires,
                }
                for f in fresh
            ],
        )

    async def _add_to_rollups(self, conn: AsyncConnection, fresh: list[UsageFact]) -> None:
        totals: dict[_BucketKey, Totals] = defaultdict(Totals)
        users: dict[tuple[_BucketKey, str], list[int]] = defaultdict(lambda: [0, 0])
        for fact in fresh:
            for scope in scopes_of(fact):
                for resolution in RESOLUTIONS:
                    key = (
                        scope.kind.value,
                        scope.id,
                        fact.provider,
                        resolution.value,
                        resolution.floor(fact.occurred_at_ms),
                    )
                    if not totals[key].add_sums(fact) or scope.kind is ScopeKind.USER:
                        # not a decision, or a USER bucket: the one user's share is the
                        # bucket itself (see buckets)
                        continue
                    share = users[(key, fact.user_id)]
                    share[0] += fact.tokens
                    share[1] += 1
        names = ("scope_kind", "scope_id", "provider", "resolution_ms", "bucket_ms")
        stmt = insert(usage_rollups)
        sums = ("events", "allowed_events", "tokens", "allowed_tokens", "refunded_tokens")
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=list(names),
                set_={c: usage_rollups.c[c] + stmt.excluded[c] for c in sums},
            ),
            [{**dict(zip(names, key, strict=True)), **_delta_row(d)} for key, d in totals.items()],
        )
        if users:
            ustmt = insert(usage_rollup_users)
            await conn.execute(
                ustmt.on_conflict_do_update(
                    index_elements=[*names, "user_id"],
                    set_={
                        c: usage_rollup_users.c[c] + ustmt.excluded[c] for c in ("tokens", "events")
                    },
                ),
                [
                    {
                        **dict(zip(names, key, strict=True)),
                        "user_id": user,
                        "tokens": t,
                        "events": n,
                    }
                    for (key, user), (t, n) in users.items()
                ],
            )

    async def _apply_purchases(self, conn: AsyncConnection, bought: list[PurchaseFact]) -> None:
        sagas = list(dict.fromkeys(f.saga_id for f in bought))
        current: dict[str, dict[str, Any]] = {}
        for i in range(0, len(sagas), _CHUNK):
            query = sa.select(purchase_views).where(
                purchase_views.c.saga_id.in_(sagas[i : i + _CHUNK])
            )
            for found in await conn.execute(query):
                current[found.saga_id] = dict(found._mapping)
        changed: dict[str, dict[str, Any]] = {}
        for fact in bought:
            row = current.get(fact.saga_id)
            nxt = _purchase_step(row, fact)
            if nxt is not row:
                current[fact.saga_id] = changed[fact.saga_id] = nxt
        if not changed:
            return
        stmt = insert(purchase_views)
        columns = [c.name for c in purchase_views.c if c.name != "saga_id"]
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["saga_id"], set_={c: stmt.excluded[c] for c in columns}
            ),
            list(changed.values()),
        )

    async def _record_dead(self, conn: AsyncConnection, dead: Sequence[DeadLetter]) -> None:
        now = self._now_ms()
        await conn.execute(
            insert(dead_letters).on_conflict_do_nothing(),
            [
                {
                    "topic": d.topic,
                    "partition": d.partition,
                    "offset": d.offset,
                    "reason": d.reason[:500],
                    "value": d.value,
                    "recorded_at_ms": now,
                }
                for d in dead
            ],
        )


def _delta_row(d: Totals) -> dict[str, int]:
    return {
        "events": d.events,
        "allowed_events": d.allowed_events,
        "tokens": d.tokens,
        "allowed_tokens": d.allowed_tokens,
        "refunded_tokens": d.refunded_tokens,
    }


def _purchase_step(row: dict[str, Any] | None, fact: PurchaseFact) -> dict[str, Any]:
    """The purchase's row after `fact` (the same object when nothing changes).

    Its state is that of the latest step by (occurred_at, event id), except that a terminal
    state is final; created_at is the earliest step's time. Applying a step twice, or steps in
    any order, gives the same row (terminal states aside: the first terminal seen stays).
    """
    if row is None:
        return {
            "saga_id": fact.saga_id,
            "user_id": fact.user_id,
            "org_id": fact.org_id,
            "provider": fact.provider,
            "tokens": fact.tokens,
            "state": fact.state.value,
            "reason": fact.reason[:300],
            "created_at_ms": fact.occurred_at_ms,
            "updated_at_ms": fact.occurred_at_ms,
            "state_event_id": fact.event_id,
        }
    nxt = dict(row)
    nxt["created_at_ms"] = min(row["created_at_ms"], fact.occurred_at_ms)
    final = PurchaseState(row["state"]).terminal
    later = (fact.occurred_at_ms, fact.event_id) > (row["updated_at_ms"], row["state_event_id"])
    if not final and (fact.state.terminal or later):
        nxt.update(
            state=fact.state.value,
            reason=fact.reason[:300],
            updated_at_ms=fact.occurred_at_ms,
            state_event_id=fact.event_id,
        )
    return row if nxt == row else nxt


def _scoped(query: sa.Select[Any], scope: Scope) -> sa.Select[Any]:
    if scope.kind is ScopeKind.USER:
        return query.where(purchase_views.c.user_id == scope.id)
    if scope.kind is ScopeKind.ORG:
        return query.where(purchase_views.c.org_id == scope.id)
    return query
