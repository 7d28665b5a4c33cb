"""The dead-letter topic: messages the projection can never apply, with why and where from."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

# Headers a dead letter carries beside the source message's own.
REASON = "leaky-dead-letter-reason"
SOURCE_TOPIC = "leaky-dead-letter-topic"
SOURCE_PARTITION = "leaky-dead-letter-partition"
SOURCE_OFFSET = "leaky-dead-letter-offset"


@dataclass(frozen=True)
class DeadLetter:
    """One source message, byte for byte, and why it cannot be projected."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    reason: str

    def all_headers(self) -> list[tuple[str, bytes]]:
        """The source's headers, then the reason and the source's coordinates."""
        return [
            *self.headers,
            (REASON, self.reason.encode()),
            (SOURCE_TOPIC, self.topic.encode()),
            (SOURCE_PARTITION, str(self.partition).encode()),
            (SOURCE_OFFSET, str(self.offset).encode()),
        ]


class DeadLetterSink(Protocol):
    """Where dead letters go; `publish` returns once every letter is durable, else raises."""

    async def publish(self, letters: Sequence[DeadLetter]) -> None: ...

    async def close(self) -> None: ...


class KafkaDeadLetters:
    """Dead letters on a Kafka topic (idempotent producer, acks=all): the same letter may be
    published twice after a crash, never lost (the source is acked only after this returns)."""

    def __init__(self, bootstrap: str, topic: str, *, timeout_s: float) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._timeout = timeout_s
        self._producer: AIOKafkaProducer | None = None

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self._bootstrap,
                client_id="leaky-analytics-dead-letters",
                acks="all",
                enable_idempotence=True,
                request_timeout_ms=int(self._timeout * 1000),
            )
            try:
                await asyncio.wait_for(producer.start(), self._timeout)
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        producer = await self._started()
        sent = [
            await producer.send(
                self._topic, value=letter.value, key=letter.key, headers=letter.all_headers()
            )
            for letter in letters
        ]
        await asyncio.wait_for(asyncio.gather(*sent), self._timeout)

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
