"""The outbox relay marks records only after the bus confirmed them, and retries refusals."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky_tokens.token.adapters.event_bus import InProcessEventBus, PublishError
from leaky_tokens.token.adapters.outbox_relay import OutboxRelay
from leaky_tokens.token.adapters.saga_contract import OutboxRecord


class ListOutbox:
    def __init__(self, count: int) -> None:
        self.records = [
            OutboxRecord(i, "t.a" if i % 2 else "t.b", EventEnvelope(event_id=f"e{i}"))
            for i in range(1, count + 1)
        ]

    async def pending(self, limit: int) -> Sequence[OutboxRecord]:
        return self.records[:limit]

    async def mark_published(self, seqs: Sequence[int]) -> None:
        marked = set(seqs)
        self.records = [r for r in self.records if r.seq not in marked]


class FlakyBus(InProcessEventBus):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def publish(self, topic: str, batch: Sequence[EventEnvelope]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise PublishError("down")
        await super().publish(topic, batch)


async def test_every_record_is_published_in_order_per_topic_and_then_marked() -> None:
    outbox, bus = ListOutbox(7), InProcessEventBus()
    seen: list[tuple[str, str]] = []

    async def note(topic: str, envelope: EventEnvelope) -> None:
        seen.append((topic, envelope.event_id))

    bus.subscribe(note)
    delivered = await OutboxRelay(outbox, bus, batch=3).run_once()
    assert delivered == 7
    assert outbox.records == []
    assert [e for t, e in seen if t == "t.a"] == ["e1", "e3", "e5", "e7"]
    assert [e for t, e in seen if t == "t.b"] == ["e2", "e4", "e6"]


async def test_a_refused_publish_marks_nothing_and_the_loop_retries_it() -> None:
    outbox, bus = ListOutbox(2), FlakyBus(failures=2)
    relay = OutboxRelay(outbox, bus, poll_s=0.01, backoff_s=0.01)
    with pytest.raises(PublishError):
        await relay.run_once()
    assert len(outbox.records) == 2  # nothing marked
    relay.start()
    for _ in range(500):
        if not outbox.records:
            break
        await asyncio.sleep(0.01)
    await relay.stop()
    assert outbox.records == []
    assert relay.published == 2


async def test_a_subscriber_failure_leaves_the_record_pending() -> None:
    outbox, bus = ListOutbox(1), InProcessEventBus()

    async def broken(topic: str, envelope: EventEnvelope) -> None:
        raise RuntimeError("participant failed")

    bus.subscribe(broken)
    with pytest.raises(PublishError):
        await OutboxRelay(outbox, bus).run_once()
    assert [r.seq for r in outbox.records] == [1]
