"""Recovery of stuck sagas: the token service only records (saga_runner=external) and the test
drives the participants itself, stopping a saga where a dead worker would leave it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky.token.v1 import token_pb2 as pb
from leaky_tokens.token.adapters.purchase_settings import PurchaseSagaSettings
from leaky_tokens.token.adapters.saga_contract import SagaParts
from leaky_tokens.token.adapters.saga_factory import build_saga_parts
from leaky_tokens.token.adapters.stub_payment import StubPaymentGateway
from tests.service.test_token_purchases import balance, buy
from tests.support.token_service import TokenHarness, token_service

TIMEOUT_S = 60.0


@asynccontextmanager
async def recorded_only(
    tmp: Path, payment: StubPaymentGateway
) -> AsyncIterator[tuple[TokenHarness, SagaParts]]:
    """The service with no saga of its own, and the saga's parts as a worker would build them."""
    async with token_service(tmp, saga_runner="external") as h:
        assert h.components.saga is None
        assert h.components.purchases is not None
        assert h.components.policy is not None
        assert h.store is not None
        parts = await build_saga_parts(
            PurchaseSagaSettings(saga_timeout_seconds=TIMEOUT_S), clock=h.clock,
            saga_store=h.components.purchases, balances=h.store, policy=h.components.policy,
            payment=payment,
        )  # fmt: skip
        yield h, parts


async def deliver(parts: SagaParts, *, upto: str = "") -> list[str]:
    """Relay the outbox to every participant until it is empty, or until the event `upto` was
    handed out (then the rest stays undelivered, as with a worker killed there)."""
    seen: list[str] = []
    while records := await parts.outbox.pending(100):
        for record in records:
            case = str(record.envelope.WhichOneof("event"))
            seen.append(case)
            for participant in parts.participants:
                await participant.handle(record.envelope)
            await parts.outbox.mark_published([record.seq])
            if case == upto:
                return seen
    return seen


async def status(h: TokenHarness, saga_id: str) -> pb.TokenPurchase:
    return await h.stub.GetPurchase(pb.GetPurchaseRequest(saga_id=saga_id), metadata=h.auth())


async def test_without_a_runner_the_saga_stays_started_and_recorded(tmp_path: Path) -> None:
    async with recorded_only(tmp_path, StubPaymentGateway()) as (h, parts):
        saga_id = (await buy(h, 10)).saga_id
        assert (await status(h, saga_id)).status == pb.PURCHASE_STATUS_STARTED
        [record] = await parts.outbox.pending(10)
        assert isinstance(record.envelope, EventEnvelope)
        assert record.envelope.purchase_requested.saga_id == saga_id
        assert record.topic == "leaky.purchase.v1"


@pytest.mark.parametrize(
    ("upto", "stuck_at", "final", "reason", "credited", "released"),
    [
        ("", pb.PURCHASE_STATUS_STARTED, pb.PURCHASE_STATUS_FAILED, "timed out", 0, 0),
        (
            "purchase_requested",
            pb.PURCHASE_STATUS_PAYMENT_RESERVED,
            pb.PURCHASE_STATUS_FAILED,
            "timed out",
            0,
            1,
        ),
        (
            "payment_reserved",
            pb.PURCHASE_STATUS_TOKENS_ALLOCATED,
            pb.PURCHASE_STATUS_COMPLETED,
            "",
            10,
            0,
        ),
    ],
    ids=["started", "payment-reserved", "tokens-allocated"],
)
async def test_recovery_finishes_a_saga_stuck_past_the_timeout(
    tmp_path: Path, upto: str, stuck_at: int, final: int, reason: str, credited: int,
    released: int,
) -> None:  # fmt: skip
    payment = StubPaymentGateway()
    async with recorded_only(tmp_path, payment) as (h, parts):
        saga_id = (await buy(h, 10)).saga_id
        if upto:
            await deliver(parts, upto=upto)  # the worker dies after handling this event
        else:
            await parts.outbox.mark_published([r.seq for r in await parts.outbox.pending(10)])
        assert (await status(h, saga_id)).status == stuck_at
        h.clock.advance(seconds=TIMEOUT_S - 1)
        assert await parts.recovery.recover_stuck(10) == 0  # not stuck yet
        h.clock.advance(seconds=2)
        assert await parts.recovery.recover_stuck(10) == 1
        assert await parts.recovery.recover_stuck(10) == 0  # the step is done: not again
        await deliver(parts)
        done = await status(h, saga_id)
        assert (done.status, done.failure_reason) == (final, reason)
        assert await balance(h) == credited
        assert payment.released == released
        # Late deliveries of the events the dead worker never handled change nothing.
        await deliver(parts)
        assert (await status(h, saga_id)) == done


async def test_a_late_request_after_recovery_reserves_nothing(tmp_path: Path) -> None:
    payment = StubPaymentGateway()
    async with recorded_only(tmp_path, payment) as (h, parts):
        saga_id = (await buy(h, 10)).saga_id
        [request] = await parts.outbox.pending(10)  # held back, as by a slow consumer
        h.clock.advance(seconds=TIMEOUT_S + 1)
        assert await parts.recovery.recover_stuck(10) == 1
        await deliver(parts)  # the request first, then the release and the failure
        assert (await status(h, saga_id)).status == pb.PURCHASE_STATUS_FAILED
        for participant in parts.participants:
            await participant.handle(request.envelope)
        assert (payment.reserved, await balance(h)) == (0, 0)
