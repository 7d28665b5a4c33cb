"""The saga's participants and recovery as the runners see them (saga_contract's Protocols)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky_tokens.token.adapters.event_bus import Subscriber
from leaky_tokens.token.adapters.saga_codec import saga_message
from leaky_tokens.token.adapters.saga_contract import Participant
from leaky_tokens.token.domain.saga import REACTIONS
from leaky_tokens.token.domain.saga_engine import SagaEngine


class SagaParticipant:
    """One participant (payment, allocation, keeper): decode, run its step, done.

    Everything it emits goes to the outbox in the step's own transaction, so `handle`
    returning means done; raising (database or store unreachable) means "redeliver".
    """

    def __init__(self, name: str, engine: SagaEngine) -> None:
        if name not in REACTIONS:
            raise ValueError(f"no saga participant {name!r}")
        self._name, self._engine = name, engine

    @property
    def name(self) -> str:
        return f"saga-{self._name}"

    async def handle(self, envelope: EventEnvelope) -> None:
        message = saga_message(envelope)
        if message is None:
            return
        await self._engine.react(self._name, message.type, message.saga_id, message.event_id)


def participants(engine: SagaEngine) -> list[SagaParticipant]:
    """Every participant of the purchase saga."""
    return [SagaParticipant(name, engine) for name in REACTIONS]


class SagaTimeouts:
    """SagaRecovery: sagas unchanged for `stale_after` are moved on by the engine."""

    def __init__(self, engine: SagaEngine, stale_after: timedelta) -> None:
        self._engine, self._stale_after = engine, stale_after

    async def recover_stuck(self, limit: int) -> int:
        return await self._engine.recover(self._stale_after, limit)


def subscriber(participant: Participant, topic: str) -> Subscriber:
    """The participant as an in-process bus subscriber of the purchase topic (embedded mode)."""

    async def deliver(on_topic: str, envelope: EventEnvelope) -> None:
        if on_topic == topic:
            await participant.handle(envelope)

    return deliver


def subscribers(parts: Sequence[Participant], topic: str) -> list[Subscriber]:
    """Each participant as a subscriber."""
    return [subscriber(p, topic) for p in parts]
