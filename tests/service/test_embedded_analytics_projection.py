"""Embedded mode end to end in one process: the token service's relay and saga write the event
log file, the analytics tailer projects it into SQLite (ADR 0038)."""

from __future__ import annotations

from pathlib import Path

from leaky.token.v1 import token_pb2 as pb
from leaky_tokens.analytics.adapters.log_tailer import (
    EmbeddedProjectionSettings,
    embedded_projection,
)
from leaky_tokens.analytics.domain.facts import FactKind, PurchaseState, UsageFact
from leaky_tokens.analytics.domain.ports import PurchaseTotals, Scope, ScopeKind
from leaky_tokens.analytics.domain.windows import Resolution
from leaky_tokens.token.adapters.stub_payment import StubPaymentGateway
from tests.support.token_service import token_service
from tests.support.wait import eventually


async def test_consumes_and_a_purchase_reach_the_analytics_store_through_the_log(
    tmp_path: Path,
) -> None:
    log_file = str(tmp_path / "events.sqlite")
    async with token_service(
        tmp_path, payment=StubPaymentGateway(), events_log_file=log_file
    ) as svc:
        for tokens in (30, 20):
            await svc.stub.Consume(
                pb.ConsumeRequest(user_id="user-1", provider="openai", tokens=tokens),
                metadata=svc.auth(),
            )
        bought = await svc.stub.Purchase(
            pb.PurchaseRequest(user_id="user-1", provider="openai", tokens=40),
            metadata=svc.auth(),
        )
        settings = EmbeddedProjectionSettings(
            events_log_file=log_file,
            embedded_database_url=f"sqlite+aiosqlite:///{tmp_path / 'analytics.db'}",
            embedded_poll_ms=20,
        )
        projection = await embedded_projection(settings)
        projection.start()
        store = projection.store
        user = Scope(ScopeKind.USER, "user-1")
        try:

            async def both() -> list[UsageFact] | None:
                found = await store.latest(user, "openai", 10)
                return found if len(found) == 2 else None

            decisions = await eventually(both, 20, what="both consumes projected")
            assert decisions is not None

            async def completed() -> PurchaseTotals | None:
                totals = await store.purchase_totals(user)
                return totals if totals.completed_purchases else None

            totals = await eventually(completed, 20, what="the purchase completed in analytics")
            (view,) = await store.purchases(user, 10)
        finally:
            await projection.close()
    # The fake clock stands still: both at one instant, ordered by event id.
    assert sorted((f.kind, f.tokens, f.allowed) for f in decisions) == [
        (FactKind.CONSUME, 20, True),
        (FactKind.CONSUME, 30, True),
    ]
    assert decisions[0].event_id > decisions[1].event_id
    day = Resolution.DAY.floor(decisions[0].occurred_at_ms)
    assert totals == PurchaseTotals(1, 40, 0)
    assert (view.saga_id, view.state, view.tokens) == (bought.saga_id, PurchaseState.COMPLETED, 40)
    reopened = await embedded_projection(settings)  # a restart projects nothing twice
    try:
        assert await reopened.tailer.run_once() == 0
        buckets = await reopened.store.buckets(user, "openai", Resolution.DAY, [day])
        assert buckets[day].events == 2
        assert buckets[day].tokens == 50
    finally:
        await reopened.close()
