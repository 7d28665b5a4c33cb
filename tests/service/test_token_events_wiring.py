"""The token service relays every decision it records: a consume reaches the event bus."""

from __future__ import annotations

from pathlib import Path

from leaky.events.v1 import events_pb2
from leaky.token.v1 import token_pb2 as pb
from leaky_tokens.token.adapters.event_bus import InProcessEventBus
from tests.support.token_service import token_service
from tests.support.wait import eventually


async def test_a_consume_is_published_once_as_a_usage_event(tmp_path: Path) -> None:
    bus = InProcessEventBus()
    seen: list[events_pb2.EventEnvelope] = []

    async def collect(topic: str, envelope: events_pb2.EventEnvelope) -> None:
        seen.append(envelope)

    bus.subscribe(collect)
    async with token_service(tmp_path, bus=bus) as svc:
        got = await svc.stub.Consume(
            pb.ConsumeRequest(user_id="user-1", provider="openai", tokens=30),
            metadata=svc.auth(),
        )
        usage = await eventually(
            lambda: [e for e in seen if e.WhichOneof("event") == "token_usage_recorded"],
            10,
            what="the consume's usage event on the bus",
        )
    (event,) = usage
    assert event.token_usage_recorded.decision_id == got.decision_id
    assert event.token_usage_recorded.allowed
    assert event.partition_key  # the tenant: Kafka's key
    assert event.event_id
