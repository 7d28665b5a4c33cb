"""The SQL saga store on SQLite and on the stack's PostgreSQL: one start per key, one run per
step under concurrency, the outbox in commit order, and a whole saga on each backend."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from leaky_tokens.token.adapters.in_memory_decision_store import InMemoryDecisionStore
from leaky_tokens.token.adapters.policy_file import PolicyFile
from leaky_tokens.token.adapters.purchase_settings import PurchaseSagaSettings
from leaky_tokens.token.adapters.saga_factory import build_saga_parts, shipped_policy
from leaky_tokens.token.adapters.saga_schema import purchase_outbox, purchase_steps, purchases
from leaky_tokens.token.adapters.saga_sql import make_engine, migrate
from leaky_tokens.token.adapters.sql_saga_store import SqlSagaStore
from leaky_tokens.token.adapters.stub_payment import StubPaymentGateway
from leaky_tokens.token.domain import saga
from leaky_tokens.token.domain.decision import Level
from leaky_tokens.token.domain.ports import Subject
from leaky_tokens.token.domain.saga import EventType, Outcome, Purchase, SagaEvent, SagaStatus, Step
from tests.support.fakes import FakeClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TOPIC = "leaky.purchase.v1"


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlSagaStore]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'token.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    await migrate(engine)
    await migrate(engine)  # idempotent: a restart migrates nothing
    async with engine.begin() as conn:  # the session's database: empty it for each test
        for table in (purchase_outbox, purchase_steps, purchases):
            await conn.execute(table.delete())
    made = SqlSagaStore(engine, TOPIC, FakeClock(T0))
    yield made
    await made.close()


def purchase(user: str, key: str | None = None, tokens: int = 10) -> tuple[Purchase, SagaEvent]:
    sid = str(uuid.uuid4())
    p = Purchase(sid, user, None, "openai", tokens, key, SagaStatus.STARTED, T0, T0)
    first = SagaEvent(EventType.PURCHASE_REQUESTED, p, saga.event_id(sid, "r"), "", T0)
    return p, first


async def test_concurrent_starts_with_one_key_insert_one_saga(store: SqlSagaStore) -> None:
    user = f"u-{uuid.uuid4()}"
    attempts = [purchase(user, "same") for _ in range(20)]
    stored = await asyncio.gather(*(store.start(p, first) for p, first in attempts))
    assert len({s.saga_id for s in stored}) == 1
    page = await store.list_for(user, 50, 0)
    assert [p.saga_id for p in page.purchases] == [stored[0].saga_id]
    others = [await store.start(*purchase(user)) for _ in range(2)]  # no key: never clash
    assert len({o.saga_id for o in others}) == 2


async def test_a_step_runs_once_however_many_deliveries_race(store: SqlSagaStore) -> None:
    p, first = purchase(f"u-{uuid.uuid4()}")
    await store.start(p, first)
    calls = 0

    async def decide(now: Purchase) -> tuple[Purchase, list[SagaEvent]] | None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)  # let the other deliveries reach the row lock
        if not saga.guard(Step.RESERVE_PAYMENT, now):
            return None
        return saga.apply(Step.RESERVE_PAYMENT, now, Outcome(ok=True, payment_id="x"), T0, "c")

    ran = await asyncio.gather(
        *(store.run_step(p.saga_id, Step.RESERVE_PAYMENT, decide) for _ in range(10))
    )
    assert sum(r is not None for r in ran) == 1
    assert calls == 1  # the others found the step done under the lock, before deciding
    assert await store.steps_done(p.saga_id) == ["payment.reserve"]
    records = await store.pending(10)
    assert [r.envelope.WhichOneof("event") for r in records] == [
        "purchase_requested", "payment_reserved",
    ]  # fmt: skip
    assert records[0].seq < records[1].seq
    await store.mark_published([records[0].seq, 999_999])  # unknown seqs are ignored
    assert [r.seq for r in await store.pending(10)] == [records[1].seq]


async def test_stuck_sagas_and_pages(store: SqlSagaStore) -> None:
    user = f"u-{uuid.uuid4()}"
    made = [(await store.start(*purchase(user, tokens=n))).saga_id for n in (1, 2, 3)]
    first = await store.list_for(user, 2, 0)
    assert [p.saga_id for p in first.purchases] == made[::-1][:2]
    rest = await store.list_for(user, 2, first.next_cursor)
    assert ([p.saga_id for p in rest.purchases], rest.next_cursor) == ([made[0]], 0)
    stuck = await store.stuck(T0 + timedelta(seconds=1), 100)
    assert set(made) <= set(stuck)
    assert not set(made) & set(await store.stuck(T0, 100))  # not older than T0 itself


async def test_a_whole_saga_completes_on_the_backend(store: SqlSagaStore) -> None:
    balances, clock = InMemoryDecisionStore(), FakeClock(T0)
    parts = await build_saga_parts(
        PurchaseSagaSettings(), clock=clock, saga_store=store, balances=balances,
        policy=PolicyFile(shipped_policy()), payment=StubPaymentGateway(),
    )  # fmt: skip
    user = f"u-{uuid.uuid4()}"
    p, first = purchase(user, tokens=70)
    await store.start(p, first)
    while records := await parts.outbox.pending(100):
        for record in records:
            for participant in parts.participants:
                await participant.handle(record.envelope)
        await parts.outbox.mark_published([r.seq for r in records])
    done = await store.get(p.saga_id)
    assert done is not None
    assert done.status is SagaStatus.COMPLETED
    credit = await balances.credit_balance(
        Subject(user, "openai"), Level.USER_QUOTA, 70, f"purchase:{p.saga_id}", 0
    )
    assert (credit.changed, credit.balance) == (False, 70)  # credited once, by the saga
