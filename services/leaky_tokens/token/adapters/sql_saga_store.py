"""The purchase saga's store on SQL: saga rows, steps done, and the outbox, one transaction each."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky_tokens.runtime.ports import Clock
from leaky_tokens.runtime.sql import unavailable_on_outage
from leaky_tokens.token.adapters import saga_codec
from leaky_tokens.token.adapters.saga_contract import OutboxRecord
from leaky_tokens.token.adapters.saga_schema import purchase_outbox, purchase_steps, purchases
from leaky_tokens.token.adapters.saga_sql import READ_ONLY
from leaky_tokens.token.domain.saga import (
    TERMINAL,
    AllocationState,
    PaymentState,
    Purchase,
    SagaEvent,
    SagaStatus,
    Step,
)
from leaky_tokens.token.domain.saga_ports import Decide, Page


@unavailable_on_outage("token")
class SqlSagaStore:
    """SagaStore and OutboxSource over SQLAlchemy (SQLite or PostgreSQL).

    A step locks its saga row (SELECT ... FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE
    serialises writers), so two deliveries of one event, or a participant and recovery, never
    run a saga's step side by side.
    """

    def __init__(self, engine: AsyncEngine, topic: str, clock: Clock) -> None:
        self._engine, self._topic, self._clock = engine, topic, clock

    # --- SagaStore ------------------------------------------------------------------------
    async def start(self, purchase: Purchase, first: SagaEvent) -> Purchase:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(purchases.insert().values(**_row(purchase)))
                await self._outbox(conn, [first])
            return purchase
        except IntegrityError:
            # The (user, key) pair is taken: by another start, maybe at this very moment.
            found = await self._by_key(purchase.user_id, purchase.idempotency_key)
            if found is None:
                raise
            return found

    async def get(self, saga_id: str) -> Purchase | None:
        async with self._read() as conn:
            row = (
                await conn.execute(sa.select(purchases).where(purchases.c.saga_id == saga_id))
            ).first()
        return None if row is None else _purchase(row)

    async def list_for(self, user_id: str, limit: int, before: int) -> Page:
        query = sa.select(purchases).where(purchases.c.user_id == user_id)
        if before > 0:
            query = query.where(purchases.c.seq < before)
        query = query.order_by(purchases.c.seq.desc()).limit(limit + 1)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        return Page([_purchase(r) for r in rows], rows[-1].seq if more else 0)

    async def run_step(self, saga_id: str, step: Step, decide: Decide) -> Purchase | None:
        async with self._engine.begin() as conn:
            locked = sa.select(purchases).where(purchases.c.saga_id == saga_id).with_for_update()
            row = (await conn.execute(locked)).first()
            if row is None:
                return None
            done = sa.select(purchase_steps.c.step).where(
                purchase_steps.c.saga_id == saga_id, purchase_steps.c.step == step.value
            )
            if (await conn.execute(done)).first() is not None:
                return None
            decided = await decide(_purchase(row))
            if decided is None:
                return None
            nxt, events = decided
            values = _row(nxt)
            for fixed in (
                "saga_id",
                "user_id",
                "org_id",
                "provider",
                "tokens",
                "idempotency_key",
                "created_at",
            ):
                values.pop(fixed)
            await conn.execute(
                purchases.update().where(purchases.c.saga_id == saga_id).values(**values)
            )
            cause = events[0].causation_id if events else ""
            await conn.execute(
                purchase_steps.insert().values(
                    saga_id=saga_id, step=step.value, cause=cause[:100], done_at=self._clock.now()
                )
            )
            await self._outbox(conn, events)
            return nxt

    async def stuck(self, updated_before: datetime, limit: int) -> Sequence[str]:
        query = (
            sa.select(purchases.c.saga_id)
            .where(purchases.c.status.not_in([s.value for s in TERMINAL]))
            .where(purchases.c.updated_at < updated_before)
            .order_by(purchases.c.updated_at)
            .limit(limit)
        )
        async with self._read() as conn:
            return list((await conn.execute(query)).scalars())

    async def steps_done(self, saga_id: str) -> list[str]:
        """The steps recorded for a saga, by name (operators and tests)."""
        query = (
            sa.select(purchase_steps.c.step)
            .where(purchase_steps.c.saga_id == saga_id)
            .order_by(purchase_steps.c.step)
        )
        async with self._read() as conn:
            return list((await conn.execute(query)).scalars())

    # --- OutboxSource ---------------------------------------------------------------------
    async def pending(self, limit: int) -> Sequence[OutboxRecord]:
        query = sa.select(purchase_outbox).order_by(purchase_outbox.c.seq).limit(limit)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        out = []
        for row in rows:
            env = EventEnvelope()
            env.ParseFromString(row.envelope)
            out.append(OutboxRecord(row.seq, row.topic, env))
        return out

    async def mark_published(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        async with self._engine.begin() as conn:
            await conn.execute(
                purchase_outbox.delete().where(purchase_outbox.c.seq.in_(list(seqs)))
            )

    async def close(self) -> None:
        """Release the engine's connections."""
        await self._engine.dispose()

    # --- helpers --------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as conn:
            yield await conn.execution_options(**{READ_ONLY: True})

    async def _outbox(self, conn: AsyncConnection, events: Sequence[SagaEvent]) -> None:
        for event in events:
            await conn.execute(
                purchase_outbox.insert().values(
                    topic=self._topic,
                    envelope=saga_codec.encode(event),
                    created_at=event.occurred_at,
                )
            )

    async def _by_key(self, user_id: str, key: str | None) -> Purchase | None:
        if key is None:
            return None
        query = sa.select(purchases).where(
            purchases.c.user_id == user_id, purchases.c.idempotency_key == key
        )
        async with self._read() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _purchase(row)


def _row(p: Purchase) -> dict[str, Any]:
    return {
        "saga_id": p.saga_id,
        "user_id": p.user_id,
        "org_id": p.org_id,
        "provider": p.provider,
        "tokens": p.tokens,
        "idempotency_key": p.idempotency_key,
        "status": p.status.value,
        "failure_reason": p.failure_reason[:300],
        "payment_id": p.payment_id,
        "payment_state": p.payment.value,
        "allocation_state": p.allocation.value,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
    }


def _purchase(row: sa.Row[Any]) -> Purchase:
    return Purchase(
        saga_id=row.saga_id,
        user_id=row.user_id,
        org_id=row.org_id,
        provider=row.provider,
        tokens=row.tokens,
        idempotency_key=row.idempotency_key,
        status=SagaStatus(row.status),
        created_at=row.created_at,
        updated_at=row.updated_at,
        failure_reason=row.failure_reason,
        payment_id=row.payment_id,
        payment=PaymentState(row.payment_state),
        allocation=AllocationState(row.allocation_state),
    )
