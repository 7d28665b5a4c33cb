"""The purchase saga end to end in the token service: SQLite, in-memory store, in-process bus.

Each flow asserts the final saga state, the balance and how often each compensation ran.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky.token.v1 import token_pb2 as pb
from leaky_tokens.token.adapters.event_bus import InProcessEventBus
from leaky_tokens.token.adapters.stub_payment import PaymentStubConfig, StubPaymentGateway
from leaky_tokens.token.domain.units import SAFE_LIMIT
from tests.support.token_service import TokenHarness, token_service
from tests.support.wait import eventually

USER = "user-1"
TERMINAL = (pb.PURCHASE_STATUS_COMPLETED, pb.PURCHASE_STATUS_FAILED)


@asynccontextmanager
async def service(
    tmp: Path, payment: StubPaymentGateway, usage: InProcessEventBus | None = None, **settings: Any
) -> AsyncIterator[tuple[TokenHarness, list[EventEnvelope]]]:
    """The token service running its saga; the list collects every saga event published
    (`usage`, when given, receives the store's usage events)."""
    async with token_service(tmp, payment=payment, bus=usage, **settings) as h:
        seen: list[EventEnvelope] = []

        async def record(topic: str, envelope: EventEnvelope) -> None:
            seen.append(envelope)

        assert h.components.saga is not None
        h.components.saga.bus.subscribe(record)
        yield h, seen


async def buy(
    h: TokenHarness, tokens: int = 40, key: str = "", user: str = USER
) -> pb.TokenPurchase:
    request = pb.PurchaseRequest(
        user_id=user, provider="openai", tokens=tokens, idempotency_key=key
    )
    return await h.stub.Purchase(request, metadata=h.auth(user))


async def settled(h: TokenHarness, saga_id: str, user: str = USER) -> pb.TokenPurchase:
    """The purchase once terminal (the saga runs in the background)."""

    async def done() -> pb.TokenPurchase | None:
        got = await h.stub.GetPurchase(
            pb.GetPurchaseRequest(saga_id=saga_id), metadata=h.auth(user)
        )
        return got if got.status in TERMINAL else None

    found = await eventually(done, 20, what=f"purchase {saga_id} terminal")
    assert found is not None
    return found


async def balance(h: TokenHarness, user: str = USER) -> int:
    quota = await h.stub.GetQuota(
        pb.GetQuotaRequest(user_id=user, provider="openai"), metadata=h.auth(user)
    )
    return quota.purchased_balance


def cases(seen: list[EventEnvelope]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in seen]


async def last_published(seen: list[EventEnvelope]) -> None:
    """Wait for the saga's last event on the bus (it is relayed just after its commit)."""

    def ended() -> bool:
        return bool(seen) and cases(seen)[-1] in ("purchase_completed", "purchase_failed")

    await eventually(ended, 20, what="the saga's last event published")


async def test_a_purchase_answers_started_then_completes_and_credits_once(tmp_path: Path) -> None:
    payment = StubPaymentGateway()
    async with service(tmp_path, payment) as (h, seen):
        first = await buy(h, 40, key="k-1")
        assert first.status == pb.PURCHASE_STATUS_STARTED
        assert (first.user_id, first.tokens, first.idempotency_key) == (USER, 40, "k-1")
        done = await settled(h, first.saga_id)
        await last_published(seen)
        assert (done.status, done.failure_reason) == (pb.PURCHASE_STATUS_COMPLETED, "")
        assert await balance(h) == 40
        assert cases(seen) == [
            "purchase_requested", "payment_reserved", "tokens_allocated", "payment_captured",
            "purchase_completed",
        ]  # fmt: skip
        assert {e.correlation_id for e in seen} == {first.saga_id}
        assert [e.causation_id for e in seen[1:]] == [e.event_id for e in seen[:-1]]
        assert (payment.reserved, payment.captured, payment.released) == (1, 1, 0)
        assert h.components.purchases is not None
        assert await h.components.purchases.steps_done(first.saga_id) == [
            "allocation.allocate", "keeper.complete", "payment.capture", "payment.reserve",
        ]  # fmt: skip


async def test_a_declined_payment_fails_with_the_reason_and_credits_nothing(
    tmp_path: Path,
) -> None:
    payment = StubPaymentGateway(PaymentStubConfig(decline_above_tokens=100, decline_reason="no"))
    async with service(tmp_path, payment) as (h, seen):
        failed = await settled(h, (await buy(h, 101)).saga_id)
        await last_published(seen)
        assert (failed.status, failed.failure_reason) == (pb.PURCHASE_STATUS_FAILED, "no")
        assert await balance(h) == 0
        assert cases(seen) == ["purchase_requested", "payment_failed", "purchase_failed"]
        assert seen[-1].purchase_failed.reason == "no"
        assert (payment.reserved, payment.released) == (0, 0)


async def test_a_failed_allocation_releases_the_payment_exactly_once(tmp_path: Path) -> None:
    # The balance is one short of what the store can count: the credit is refused.
    payment = StubPaymentGateway()
    async with service(tmp_path, payment, max_request_tokens=SAFE_LIMIT) as (h, seen):
        grant = pb.GrantTokensRequest(
            user_id=USER, provider="openai", tokens=SAFE_LIMIT - 10, reason="fill"
        )
        await h.stub.GrantTokens(grant, metadata=h.auth("admin", "ADMIN"))
        failed = await settled(h, (await buy(h, 20)).saga_id)
        await last_published(seen)
        assert failed.status == pb.PURCHASE_STATUS_FAILED
        assert "2**53" in failed.failure_reason
        assert await balance(h) == SAFE_LIMIT - 10
        assert cases(seen) == [
            "purchase_requested", "payment_reserved", "allocation_failed", "payment_released",
            "purchase_failed",
        ]  # fmt: skip
        assert (payment.reserved, payment.captured, payment.released) == (1, 0, 1)


async def test_a_failed_capture_reverts_the_allocation_and_releases_exactly_once(
    tmp_path: Path,
) -> None:
    payment = StubPaymentGateway(PaymentStubConfig(capture_failure_rate=1.0))
    usage, usage_cases = InProcessEventBus(), list[str]()

    async def record(topic: str, envelope: EventEnvelope) -> None:
        usage_cases.append(str(envelope.WhichOneof("event")))

    usage.subscribe(record)
    async with service(tmp_path, payment, usage) as (h, seen):
        failed = await settled(h, (await buy(h, 30)).saga_id)
        await last_published(seen)
        assert (failed.status, failed.failure_reason) == (
            pb.PURCHASE_STATUS_FAILED, "payment capture failed",
        )  # fmt: skip
        assert await balance(h) == 0  # credited, then taken back
        assert cases(seen) == [
            "purchase_requested", "payment_reserved", "tokens_allocated",
            "payment_capture_failed", "allocation_reverted", "payment_released", "purchase_failed",
        ]  # fmt: skip
        assert seen[4].allocation_reverted.tokens == 30
        assert (payment.reserved, payment.captured, payment.released) == (1, 0, 1)
        # The store recorded the credit and its revert on the usage topic.
        found = await eventually(lambda: usage_cases if len(usage_cases) >= 2 else None, 20)
        assert found == ["tokens_granted", "grant_reverted"]


@pytest.mark.parametrize(
    "config",
    [
        PaymentStubConfig(),
        PaymentStubConfig(failure_rate=1.0),
        PaymentStubConfig(capture_failure_rate=1.0),
    ],
    ids=["completed", "declined", "capture-failed"],
)
async def test_every_event_delivered_again_changes_nothing(
    tmp_path: Path, config: PaymentStubConfig
) -> None:
    payment = StubPaymentGateway(config)
    async with service(tmp_path, payment) as (h, seen):
        saga_id = (await buy(h, 25)).saga_id
        before = await settled(h, saga_id)
        await last_published(seen)
        store, parts = h.components.purchases, h.components.saga
        assert store is not None
        assert parts is not None
        steps, money = await store.steps_done(saga_id), await balance(h)
        counts = (payment.reserved, payment.captured, payment.released)

        async def drained() -> bool:
            return not await store.pending(10)

        await eventually(drained, 20, what="the outbox drained")
        published = len(seen)
        for envelope in list(seen) * 2:  # every event, twice more, to every participant
            for participant in parts.parts.participants:
                await participant.handle(envelope)
        await parts.relay.run_once()  # whatever a redelivery emitted would be published now
        after = await h.stub.GetPurchase(pb.GetPurchaseRequest(saga_id=saga_id), metadata=h.auth())
        assert after == before
        assert await store.steps_done(saga_id) == steps
        assert await balance(h) == money
        assert (payment.reserved, payment.captured, payment.released) == counts
        assert len(seen) == published  # nothing new was emitted
