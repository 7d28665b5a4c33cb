"""The purchase saga for real: the token service (saga_runner=external) on the stack's
PostgreSQL and Redis, the real saga worker (`build_saga_parts`) on the stack's Kafka.

Each test asserts the final saga state (GetPurchase), the purchased balance (GetQuota) and
how many distinct events of each type the saga has on the topic: every compensation once.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from leaky.token.v1 import token_pb2 as pb
from leaky_tokens.stack.orchestrator import Stack
from leaky_tokens.token.adapters.kafka_event_bus import KafkaEventBus
from leaky_tokens.token.adapters.saga_schema import purchase_outbox, purchase_steps
from leaky_tokens.token.adapters.saga_sql import make_engine
from leaky_tokens.token.domain.units import SAFE_LIMIT
from tests.integration.test_saga_worker import Worker
from tests.support.saga_lane import DELIVERY, TERMINAL, Lane, distinct, saga_lane
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

COMPLETED = Counter(
    purchase_requested=1, payment_reserved=1, tokens_allocated=1, payment_captured=1,
    purchase_completed=1,
)  # fmt: skip
DECLINE_ABOVE = 1000


@pytest.fixture(scope="module")
async def lane(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lane]:
    """The lane the tests with the default worker share: declines above DECLINE_ABOVE."""
    env = {
        "LEAKY_TOKEN_SAGA_PAYMENT_DECLINE_ABOVE_TOKENS": str(DECLINE_ABOVE),
        "LEAKY_TOKEN_SAGA_PAYMENT_DECLINE_REASON": "card declined: over the limit",
    }
    async with saga_lane(stack, tmp_path_factory.mktemp("saga-lane"), env) as running:
        yield running


async def steps(lane: Lane, saga_id: str) -> list[str]:
    engine = make_engine(lane.database_url)
    try:
        async with engine.connect() as conn:
            query = sa.select(purchase_steps.c.step).where(purchase_steps.c.saga_id == saga_id)
            return sorted(row.step for row in await conn.execute(query))
    finally:
        await engine.dispose()


async def test_a_purchase_completes_and_credits_once(lane: Lane) -> None:
    started = await lane.buy("buyer-ok", 40, key="k-1")
    assert started.status == pb.PURCHASE_STATUS_STARTED
    done = await lane.settled(started.saga_id, "buyer-ok")
    assert (done.status, done.failure_reason) == (pb.PURCHASE_STATUS_COMPLETED, "")
    assert await lane.balance("buyer-ok") == 40
    assert await lane.counts(started.saga_id) == COMPLETED
    assert await steps(lane, started.saga_id) == [
        "allocation.allocate", "keeper.complete", "payment.capture", "payment.reserve",
    ]  # fmt: skip


async def test_a_declined_payment_fails_with_its_reason_and_releases_nothing(lane: Lane) -> None:
    saga_id = (await lane.buy("buyer-declined", DECLINE_ABOVE + 1)).saga_id
    failed = await lane.settled(saga_id, "buyer-declined")
    assert (failed.status, failed.failure_reason) == (
        pb.PURCHASE_STATUS_FAILED, "card declined: over the limit",
    )  # fmt: skip
    assert await lane.balance("buyer-declined") == 0
    assert await lane.counts(saga_id) == Counter(
        purchase_requested=1, payment_failed=1, purchase_failed=1
    )


async def test_a_credit_redis_refuses_releases_the_payment_exactly_once(lane: Lane) -> None:
    # The balance is 10 short of what the store counts exactly (2^53): Redis's credit
    # script refuses the purchase's 20, so allocation fails for real.
    user = "buyer-full"
    grant = pb.GrantTokensRequest(
        user_id=user, provider="openai", tokens=SAFE_LIMIT - 10, reason="fill"
    )
    await lane.h.stub.GrantTokens(grant, metadata=lane.h.auth("admin", "ADMIN"))
    saga_id = (await lane.buy(user, 20)).saga_id
    failed = await lane.settled(saga_id, user)
    assert (failed.status, failed.failure_reason) == (
        pb.PURCHASE_STATUS_FAILED, "the purchased balance would reach 2^53",
    )  # fmt: skip
    assert await lane.balance(user) == SAFE_LIMIT - 10
    assert await lane.counts(saga_id) == Counter(
        purchase_requested=1, payment_reserved=1, allocation_failed=1, payment_released=1,
        purchase_failed=1,
    )  # fmt: skip


async def test_a_failed_capture_reverts_the_credit_and_releases_once(
    stack: Stack, tmp_path: Path
) -> None:
    env = {"LEAKY_TOKEN_SAGA_PAYMENT_CAPTURE_FAILURE_RATE": "1"}
    async with saga_lane(stack, tmp_path, env) as capture:
        saga_id = (await capture.buy("buyer-capture", 30)).saga_id
        failed = await capture.settled(saga_id, "buyer-capture")
        assert (failed.status, failed.failure_reason) == (
            pb.PURCHASE_STATUS_FAILED, "payment capture failed",
        )  # fmt: skip
        assert await capture.balance("buyer-capture") == 0  # credited, then taken back
        assert await capture.counts(saga_id) == Counter(
            purchase_requested=1, payment_reserved=1, tokens_allocated=1,
            payment_capture_failed=1, allocation_reverted=1, payment_released=1,
            purchase_failed=1,
        )  # fmt: skip


async def test_every_event_delivered_again_changes_nothing(lane: Lane) -> None:
    user = "buyer-dup"
    saga_id = (await lane.buy(user, 25)).saga_id
    before = await lane.settled(saga_id, user)
    assert before.status == pb.PURCHASE_STATUS_COMPLETED
    mine = [e for e in await lane.events() if e.correlation_id == saga_id]
    counts, done = distinct(mine, saga_id), await steps(lane, saga_id)
    bus = KafkaEventBus(lane.worker.bootstrap, client_id="saga-native-duplicates")
    try:
        await bus.publish(lane.worker.topic, mine)  # every envelope of the saga, once more
    finally:
        await bus.close()
    # A sentinel after the copies, on the same partition key (the user): once it completed,
    # every participant has handled the copies before it, and emitted what it would.
    sentinel = (await lane.buy(user, 5)).saga_id
    assert (await lane.settled(sentinel, user)).status == pb.PURCHASE_STATUS_COMPLETED
    assert await lane.get(saga_id, user) == before
    assert await lane.balance(user) == 25 + 5
    assert await steps(lane, saga_id) == done
    after = [e for e in await lane.events() if e.correlation_id == saga_id]
    assert len(after) == 2 * len(mine)  # the copies, and nothing new
    assert distinct(after, saga_id) == counts == COMPLETED


async def test_a_worker_killed_mid_saga_and_restarted_finishes_every_saga_once(
    stack: Stack, tmp_path: Path
) -> None:
    env = {"LEAKY_TOKEN_SAGA_PAYMENT_LATENCY_MS": "700"}
    async with saga_lane(stack, tmp_path, env) as slow:
        users = [f"buyer-kill-{i}" for i in range(3)]
        bought = [(u, (await slow.buy(u, 10 + n)).saga_id) for u in users for n in range(2)]

        async def statuses() -> list[int]:
            return [(await slow.get(s, u)).status for u, s in bought]

        async def in_flight() -> bool:
            now = await statuses()
            return any(s != pb.PURCHASE_STATUS_STARTED for s in now)

        await eventually(in_flight, DELIVERY, what="a saga past its first step")
        slow.worker.stop(signal.SIGKILL)
        assert not all(s in TERMINAL for s in await statuses()), "meant to die mid-saga"
        slow.worker.start()
        for user, saga_id in bought:
            done = await slow.settled(saga_id, user)
            assert done.status == pb.PURCHASE_STATUS_COMPLETED
            assert await slow.counts(saga_id) == COMPLETED
        for user in users:
            assert await slow.balance(user) == 10 + 11  # each saga credited exactly once


async def test_a_stuck_saga_is_failed_timed_out_by_recovery(stack: Stack, tmp_path: Path) -> None:
    # The saga's PurchaseRequested is lost before any relay ran (its outbox row deleted):
    # nothing will ever move it, but the recovery of a worker with a short timeout.
    env = {
        "LEAKY_TOKEN_SAGA_TIMEOUT_SECONDS": "2",
        "LEAKY_TOKEN_SAGA_RECOVERY_INTERVAL_MS": "200",
    }
    async with saga_lane(stack, tmp_path, env, start=False) as stuck:
        saga_id = (await stuck.buy("buyer-stuck", 15)).saga_id
        engine = make_engine(stuck.database_url)
        try:
            async with engine.begin() as conn:
                deleted = await conn.execute(purchase_outbox.delete())
            assert deleted.rowcount == 1
        finally:
            await engine.dispose()
        stuck.worker.start()
        await stuck.worker.serving()
        failed = await stuck.settled(saga_id, "buyer-stuck")
        assert (failed.status, failed.failure_reason) == (pb.PURCHASE_STATUS_FAILED, "timed out")
        assert await stuck.balance("buyer-stuck") == 0
        assert await stuck.counts(saga_id) == Counter(payment_released=1, purchase_failed=1)
        assert await steps(stuck, saga_id) == ["keeper.fail", "payment.release"]


async def test_a_saga_stuck_after_allocation_is_completed_by_another_workers_recovery(
    stack: Stack, tmp_path: Path
) -> None:
    # The worker dies while capturing (a slow payment); nobody consumes its topic any more.
    # A second worker on the same database (its own topic and group) finds the saga stuck in
    # TOKENS_ALLOCATED and, as ADR 0032 says, captures and completes it.
    env = {"LEAKY_TOKEN_SAGA_PAYMENT_LATENCY_MS": "1500"}
    async with saga_lane(stack, tmp_path, env) as first:
        user = "buyer-recovered"
        saga_id = (await first.buy(user, 35)).saga_id

        async def allocated() -> bool:
            got = await first.get(saga_id, user)
            return bool(got.status == pb.PURCHASE_STATUS_TOKENS_ALLOCATED)

        await eventually(allocated, DELIVERY, what="the saga allocated, its capture pending")
        first.worker.stop(signal.SIGKILL)
        (tmp_path / "recoverer").mkdir()
        recoverer = Worker(
            first.worker.bootstrap, tmp_path / "recoverer",
            extra={**first.worker.extra, "LEAKY_TOKEN_SAGA_TIMEOUT_SECONDS": "2",
                   "LEAKY_TOKEN_SAGA_RECOVERY_INTERVAL_MS": "200"},
        )  # fmt: skip
        recoverer.start()
        try:
            second = Lane(first.h, recoverer, first.database_url)
            done = await second.settled(saga_id, user)
            assert (done.status, done.failure_reason) == (pb.PURCHASE_STATUS_COMPLETED, "")
            assert await first.balance(user) == 35
            both = await first.events() + await second.events()
            assert distinct(both, saga_id) == COMPLETED
            assert distinct(await second.events(), saga_id) == Counter(
                payment_captured=1, purchase_completed=1
            )
            assert await steps(first, saga_id) == [
                "allocation.allocate", "keeper.complete", "payment.capture", "payment.reserve",
            ]  # fmt: skip
        finally:
            recoverer.stop()
