"""The saga's small adapters: the stub payment's determinism, its settings, the event codec."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from leaky_tokens.runtime.settings import SettingsError
from leaky_tokens.token.adapters.purchase_settings import PurchaseSagaSettings, SagaRunner
from leaky_tokens.token.adapters.saga_codec import envelope, saga_message
from leaky_tokens.token.adapters.stub_payment import PaymentStubConfig, StubPaymentGateway
from leaky_tokens.token.domain.saga import EventType, Purchase, SagaEvent, SagaStatus, event_id

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def purchase(tokens: int = 10, org: str | None = None) -> Purchase:
    return Purchase(
        str(uuid.uuid4()), "u1", org, "openai", tokens, None, SagaStatus.STARTED, T0, T0
    )


async def test_the_stub_decides_each_saga_the_same_way_every_time() -> None:
    config = PaymentStubConfig(failure_rate=0.5, seed="s1")
    sagas = [purchase() for _ in range(64)]
    first = [(await StubPaymentGateway(config).reserve(p)).ok for p in sagas]
    again = [(await StubPaymentGateway(config).reserve(p)).ok for p in sagas]
    other = [(await StubPaymentGateway(replace(config, seed="s2")).reserve(p)).ok for p in sagas]
    assert first == again  # another process (a restarted worker) answers alike
    assert True in first
    assert False in first
    assert other != first


async def test_the_stub_holds_once_and_a_release_first_bars_the_hold() -> None:
    stub = StubPaymentGateway(PaymentStubConfig(decline_above_tokens=100, decline_reason="big"))
    small, big, released = purchase(100), purchase(101), purchase()
    held = await stub.reserve(small)
    assert (held.ok, held.payment_id) == (True, f"pay_{small.saga_id}")
    assert (await stub.reserve(small)) == held
    assert (await stub.reserve(big)).reason == "big"
    await stub.release(released)  # recovery released it before the reserve arrived
    assert not (await stub.reserve(released)).ok
    assert (await stub.capture(small)).ok
    assert (await stub.capture(small)).ok
    assert (stub.reserved, stub.captured, stub.released) == (1, 1, 0)


@pytest.mark.parametrize(
    "bad",
    [
        {"saga_runner": "faust"},
        {"saga_payment_failure_rate": 1.5},
        {"saga_payment_capture_failure_rate": -0.1},
        {"saga_timeout_seconds": 0},
        {"saga_recovery_batch": 0},
        {"saga_topic": ""},
    ],
)
def test_bad_saga_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(SettingsError):
        PurchaseSagaSettings(**bad)  # type: ignore[arg-type]


def test_saga_settings_default_to_the_embedded_runner() -> None:
    settings = PurchaseSagaSettings()
    assert (settings.runner, settings.saga_topic) == (SagaRunner.EMBEDDED, "leaky.purchase.v1")


def test_an_event_travels_keyed_by_its_tenant_and_comes_back_as_a_saga_message() -> None:
    p = replace(purchase(30, org="org-1"), payment_id="pay-1")
    eid = event_id(p.saga_id, "allocation_reverted")
    event = SagaEvent(EventType.ALLOCATION_REVERTED, p, eid, "cause-1", T0, "lost", tokens=12)
    env = envelope(event)
    assert (env.partition_key, env.correlation_id, env.causation_id) == (
        "org-1",
        p.saga_id,
        "cause-1",
    )
    body = env.allocation_reverted
    assert (body.saga_id, body.tokens, body.reason, body.org_id) == (p.saga_id, 12, "lost", "org-1")
    message = saga_message(env)
    assert message is not None
    assert (message.type, message.saga_id, message.event_id) == (
        EventType.ALLOCATION_REVERTED, p.saga_id, eid,
    )  # fmt: skip
    reserved = envelope(replace(event, type=EventType.PAYMENT_RESERVED))
    assert (reserved.payment_reserved.payment_id, reserved.payment_reserved.tokens) == ("pay-1", 30)
    env.ClearField("allocation_reverted")
    env.tokens_granted.grant_id = "g"
    assert saga_message(env) is None  # another topic's event: skipped
