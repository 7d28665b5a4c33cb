"""Purchases in the token service on the stack's PostgreSQL and Redis (the embedded runner)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from leaky.token.v1 import token_pb2 as pb
from leaky_tokens.stack.orchestrator import Stack
from leaky_tokens.stack.redis import Redis as RedisComponent
from leaky_tokens.token.adapters.saga_schema import purchase_outbox, purchase_steps, purchases
from leaky_tokens.token.adapters.saga_sql import make_engine, migrate
from leaky_tokens.token.adapters.stub_payment import PaymentStubConfig, StubPaymentGateway
from tests.service.test_token_purchases import balance, buy, settled
from tests.support.stack import component
from tests.support.token_service import redis_settings, token_service

pytestmark = pytest.mark.integration


@pytest.fixture
async def on_stack(stack: Stack, postgres_url: str) -> dict[str, Any]:
    """Settings for the stack's Redis (a key prefix of its own) and an emptied saga database."""
    engine = make_engine(postgres_url)
    await migrate(engine)
    async with engine.begin() as conn:
        for table in (purchase_outbox, purchase_steps, purchases):
            await conn.execute(table.delete())
    await engine.dispose()
    redis = component(stack, "redis")
    assert isinstance(redis, RedisComponent)
    return {**redis_settings(redis.url), "database_url": postgres_url}


async def test_twenty_concurrent_purchases_with_one_key_credit_once_on_postgres_and_redis(
    tmp_path: Path, on_stack: dict[str, Any]
) -> None:
    payment = StubPaymentGateway()
    async with token_service(tmp_path, payment=payment, **on_stack) as h:
        answers = await asyncio.gather(*(buy(h, 45, key="one") for _ in range(20)))
        assert len({a.saga_id for a in answers}) == 1
        done = await settled(h, answers[0].saga_id)
        assert done.status == pb.PURCHASE_STATUS_COMPLETED
        assert await balance(h) == 45
        assert (payment.reserved, payment.captured, payment.released) == (1, 1, 0)


async def test_a_failed_capture_is_compensated_once_on_postgres_and_redis(
    tmp_path: Path, on_stack: dict[str, Any]
) -> None:
    payment = StubPaymentGateway(PaymentStubConfig(capture_failure_rate=1.0))
    async with token_service(tmp_path, payment=payment, **on_stack) as h:
        failed = await settled(h, (await buy(h, 45)).saga_id)
        assert (failed.status, failed.failure_reason) == (
            pb.PURCHASE_STATUS_FAILED, "payment capture failed",
        )  # fmt: skip
        assert await balance(h) == 0  # the Redis credit was taken back
        assert (payment.reserved, payment.captured, payment.released) == (1, 0, 1)
        assert h.components.purchases is not None
        assert await h.components.purchases.steps_done(failed.saga_id) == [
            "allocation.allocate", "allocation.revert", "keeper.fail", "payment.capture",
            "payment.release", "payment.reserve",
        ]  # fmt: skip
