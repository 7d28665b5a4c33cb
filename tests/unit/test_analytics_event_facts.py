"""Envelope -> fact: what the projection refuses as poison rather than store."""

from __future__ import annotations

import pytest
from google.protobuf import timestamp_pb2

from leaky.events.v1 import events_pb2
from leaky_tokens.analytics.adapters.event_facts import PoisonEventError, fact_of
from leaky_tokens.analytics.domain.facts import UsageFact


def consume(
    occurred_at: timestamp_pb2.Timestamp | None = None, tokens: int = 5
) -> events_pb2.EventEnvelope:
    envelope = events_pb2.EventEnvelope(event_id="e1", partition_key="u1")
    envelope.occurred_at.CopyFrom(occurred_at or timestamp_pb2.Timestamp(seconds=1_700_000_000))
    envelope.token_usage_recorded.CopyFrom(
        events_pb2.TokenUsageRecorded(
            decision_id="d1", user_id="u1", provider="openai", tokens=tokens, allowed=True
        )
    )
    return envelope


def test_a_well_formed_decision_is_a_fact() -> None:
    fact = fact_of(consume(timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=250_000_000)))
    assert isinstance(fact, UsageFact)
    assert fact.occurred_at_ms == 1_700_000_000_250


@pytest.mark.parametrize(
    ("seconds", "nanos", "reason"),
    [
        # Parsed from the wire unchecked; a row at such a time could never be sent back as a
        # Timestamp, so every Usage of the provider would fail INTERNAL.
        (253_402_300_800, 0, "occurred_at is after 9999-12-31"),
        (2**62, 0, "occurred_at is after 9999-12-31"),
        (1_700_000_000, -1, "occurred_at has nanos outside 0-999999999"),
        (1_700_000_000, 1_000_000_000, "occurred_at has nanos outside 0-999999999"),
        (0, 0, "occurred_at is not after 1970"),
    ],
)
def test_an_unrepresentable_time_is_poison(seconds: int, nanos: int, reason: str) -> None:
    wire = consume(timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)).SerializeToString()
    envelope = events_pb2.EventEnvelope.FromString(wire)
    with pytest.raises(PoisonEventError) as raised:
        fact_of(envelope)
    assert raised.value.reason == reason


def test_a_token_count_no_request_can_carry_is_poison() -> None:
    assert isinstance(fact_of(consume(tokens=2**53)), UsageFact)
    # 2**62 twice in one bucket overflows a 64-bit sum: the stores must never see it.
    for tokens in (2**53 + 1, 2**62):
        with pytest.raises(PoisonEventError, match="more than 9007199254740992 tokens"):
            fact_of(consume(tokens=tokens))
    purchase = events_pb2.EventEnvelope(event_id="e2", partition_key="s1")
    purchase.occurred_at.CopyFrom(timestamp_pb2.Timestamp(seconds=1_700_000_000))
    purchase.purchase_requested.saga_id = "s1"
    purchase.purchase_requested.user_id = "u1"
    purchase.purchase_requested.provider = "openai"
    purchase.purchase_requested.tokens = 2**62
    with pytest.raises(PoisonEventError, match="tokens"):
        fact_of(purchase)
