"""The saga's metrics count each committed step once, purchases by outcome, and recoveries."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky_tokens.token.adapters.saga_contract import SagaParts
from leaky_tokens.token.adapters.stub_payment import PaymentStubConfig, StubPaymentGateway
from tests.service.test_token_purchase_recovery import TIMEOUT_S, deliver, recorded_only
from tests.service.test_token_purchases import buy


def registry_of(parts: SagaParts) -> CollectorRegistry:
    registry = CollectorRegistry()
    for collector in parts.collectors:
        registry.register(collector)
    return registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    assert found is not None, (name, labels)
    return found


async def relay_all(parts: SagaParts) -> list[EventEnvelope]:
    """Hand every outbox event to every participant until none is left; the events handed."""
    handled: list[EventEnvelope] = []
    while records := await parts.outbox.pending(100):
        for record in records:
            handled.append(record.envelope)
            for participant in parts.participants:
                await participant.handle(record.envelope)
            await parts.outbox.mark_published([record.seq])
    return handled


async def test_purchases_count_by_outcome_and_a_redelivery_counts_nothing(tmp_path: Path) -> None:
    payment = StubPaymentGateway(PaymentStubConfig(decline_above_tokens=100))
    async with recorded_only(tmp_path, payment) as (h, parts):
        registry = registry_of(parts)
        # Every series exists at 0 before the first purchase, so rate() has a start.
        assert value(registry, "leaky_token_purchases_total", outcome="completed") == 0
        assert value(registry, "leaky_token_saga_steps_total", step="payment.release") == 0
        await buy(h, 10)
        handled = await relay_all(parts)
        await buy(h, 500)  # declined by the stub: the saga fails, nothing to compensate
        handled += await relay_all(parts)
        assert value(registry, "leaky_token_purchases_total", outcome="completed") == 1
        assert value(registry, "leaky_token_purchases_total", outcome="failed") == 1
        assert value(registry, "leaky_token_saga_steps_total", step="payment.reserve") == 2
        for step in ("allocation.allocate", "payment.capture"):
            assert value(registry, "leaky_token_saga_steps_total", step=step) == 1
        assert value(registry, "leaky_token_saga_steps_total", step="keeper.complete") == 1
        assert value(registry, "leaky_token_saga_steps_total", step="keeper.fail") == 1
        assert value(registry, "leaky_token_saga_steps_total", step="payment.release") == 0
        # Handing every participant the same events again changes and counts nothing.
        before = [(s.name, s.labels, s.value) for m in registry.collect() for s in m.samples]
        assert len(handled) >= 8
        for envelope in handled:
            for participant in parts.participants:
                await participant.handle(envelope)
        after = [(s.name, s.labels, s.value) for m in registry.collect() for s in m.samples]
        assert [x for x in after if "_created" not in x[0]] == [
            x for x in before if "_created" not in x[0]
        ]


async def test_a_compensated_timeout_counts_the_release_the_failure_and_the_recovery(
    tmp_path: Path,
) -> None:
    async with recorded_only(tmp_path, StubPaymentGateway()) as (h, parts):
        registry = registry_of(parts)
        await buy(h, 10)
        await deliver(parts, upto="purchase_requested")  # payment held, then the worker died
        h.clock.advance(seconds=TIMEOUT_S + 1)
        assert await parts.recovery.recover_stuck(10) == 1
        await deliver(parts)
        assert value(registry, "leaky_token_saga_recovered_total") == 1
        assert value(registry, "leaky_token_saga_steps_total", step="payment.release") == 1
        assert value(registry, "leaky_token_purchases_total", outcome="failed") == 1
        assert value(registry, "leaky_token_purchases_total", outcome="completed") == 0
