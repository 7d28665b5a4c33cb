"""The event bus port and its in-process adapter (the embedded file bus extends it, ADR 0038)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky_tokens.runtime.errors import UnavailableError


class PublishError(UnavailableError):
    """The bus did not confirm a batch; nothing of it may be assumed delivered."""


class EventBus(Protocol):
    """Publishes envelopes keyed by their partition key, in order per key.

    `publish` returns only once every envelope of the batch is acknowledged (Kafka: by all
    in-sync replicas) and raises `PublishError` otherwise; a batch may then be published
    again, so consumers see each event at least once and de-duplicate by `event_id`.
    """

    async def publish(self, topic: str, batch: Sequence[EventEnvelope]) -> None:
        """Deliver the batch or raise `PublishError`."""

    async def close(self) -> None:
        """Release connections; publishing after this is an error."""


Subscriber = Callable[[str, EventEnvelope], Awaitable[None]]


class InProcessEventBus:
    """Hands each envelope to every subscriber, in order, before `publish` returns.

    A subscriber that raises fails the batch (`PublishError`): the relay retries it, so a
    subscriber sees an event at least once, exactly like a Kafka consumer.
    """

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._closed = False

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Receive every envelope published from now on; returns the unsubscribe call."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    async def publish(self, topic: str, batch: Sequence[EventEnvelope]) -> None:
        if self._closed:
            raise PublishError("the in-process event bus is closed")
        for envelope in batch:
            for subscriber in tuple(self._subscribers):
                try:
                    await subscriber(topic, envelope)
                except Exception as error:  # any subscriber failure: the batch is redelivered
                    raise PublishError(f"subscriber failed on {envelope.event_id}") from error

    async def close(self) -> None:
        self._closed = True
