"""What the purchase saga's participants and the processes that run them agree on (issue 8).

The saga's logic (participants, the PostgreSQL saga store and its outbox, recovery) and the
processes that drive it (embedded: the in-process bus; native: Faust agents over Kafka, the
outbox relay, supervision and health) meet only here, so either side is replaced without the
other noticing. Everything crosses as `EventEnvelope`s on the purchase topic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.registry import Collector

from leaky.events.v1.events_pb2 import EventEnvelope


class Participant(Protocol):
    """One saga participant (payment, allocation, the saga's own state keeper, ...).

    `handle` receives every envelope of the purchase topic, in order per partition key, at
    least once; it ignores event cases it does not react to. It is idempotent: a redelivered
    envelope changes nothing and emits nothing new. Its effects and the events it emits are
    recorded together (the transactional outbox), so returning means "done, may be acked";
    raising means "not done": the runner redelivers the same envelope later.
    """

    @property
    def name(self) -> str:
        """A stable name: the Faust agent's and the consumer's name, metric label, log field."""

    async def handle(self, envelope: EventEnvelope) -> None:
        """React to one envelope (or ignore it); raise to have it redelivered."""


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One event waiting in the outbox: its sequence number and where it goes."""

    seq: int  # increasing in commit order; mark_published takes these back
    topic: str
    envelope: EventEnvelope


class OutboxSource(Protocol):
    """Events recorded in the saga store's transactions, not yet handed to the bus."""

    async def pending(self, limit: int) -> Sequence[OutboxRecord]:
        """Up to `limit` unpublished records, oldest first (the same ones again until marked)."""

    async def mark_published(self, seqs: Sequence[int]) -> None:
        """Forget records the bus acknowledged; unknown or already-marked seqs are ignored."""


class SagaRecovery(Protocol):
    """Finishes or compensates sagas stuck past their timeout."""

    async def recover_stuck(self, limit: int) -> int:
        """Advance up to `limit` stuck sagas one step (through the outbox); how many."""


class Closeable(Protocol):
    """Something holding connections."""

    async def close(self) -> None:
        """Release them."""


@dataclass(frozen=True)
class SagaParts:
    """What a process running the saga needs, built from settings by the saga's factory.

    The embedded token service hands `participants` to the in-process bus; the Faust worker
    makes one agent of each; both run an OutboxRelay over `outbox` and call `recovery`
    periodically. `resources` are closed, in order, when the process stops; `collectors`
    (the saga's metrics) go on the running process's /metrics.
    """

    participants: Sequence[Participant]
    outbox: OutboxSource
    recovery: SagaRecovery
    resources: Sequence[Closeable] = ()
    collectors: Sequence[Collector] = ()
