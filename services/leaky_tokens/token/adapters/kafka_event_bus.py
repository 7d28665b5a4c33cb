"""The Kafka event bus: an idempotent aiokafka producer, acks from every in-sync replica."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky_tokens.token.adapters.event_bus import PublishError

log = logging.getLogger(__name__)


class KafkaEventBus:
    """Publishes each envelope with its partition key as the Kafka key (one tenant, one
    partition, in order); `publish` returns when the broker acknowledged the whole batch.

    A failed batch drops the producer: the next `publish` connects afresh, so a broker that
    went away and came back is found again without the relay knowing anything about Kafka.
    The producer retries within `timeout_s`; past it the batch fails and the relay backs off.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str = "leaky-token-relay",
        timeout_s: float = 10.0,
        retry_backoff_ms: int = 100,
    ) -> None:
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._timeout = timeout_s
        self._retry_backoff_ms = retry_backoff_ms
        self._producer: AIOKafkaProducer | None = None

    async def publish(self, topic: str, batch: Sequence[EventEnvelope]) -> None:
        if not batch:
            return
        try:
            await asyncio.wait_for(self._send(topic, batch), self._timeout)
        except (KafkaError, OSError, TimeoutError) as error:
            await self._drop()
            why = f"{type(error).__name__}: {error}"
            raise PublishError(f"kafka {self._bootstrap}: {why}") from error

    async def close(self) -> None:
        await self._drop()

    async def _send(self, topic: str, batch: Sequence[EventEnvelope]) -> None:
        producer = await self._connected()
        sent = []
        for envelope in batch:
            value = envelope.SerializeToString(deterministic=True)
            key = envelope.partition_key.encode()
            # `send` only queues; the futures resolve when the broker acknowledged.
            sent.append(await producer.send(topic, value=value, key=key))
        await asyncio.gather(*sent)

    async def _connected(self) -> AIOKafkaProducer:
        if self._producer is None:
            timeout_ms = int(self._timeout * 1000)
            producer = AIOKafkaProducer(
                bootstrap_servers=self._bootstrap,
                client_id=self._client_id,
                acks="all",
                # Broker-side de-duplication of the producer's own retries, and order kept.
                enable_idempotence=True,
                request_timeout_ms=timeout_ms,
                retry_backoff_ms=self._retry_backoff_ms,
                linger_ms=5,
            )
            try:
                await producer.start()
            except BaseException:
                await _stop(producer)
                raise
            self._producer = producer
        return self._producer

    async def _drop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop(producer)


async def _stop(producer: AIOKafkaProducer) -> None:
    # Stopping flushes first; a broker that is down must not hold the relay up for long. Cut
    # short, stop() leaves the sender and the client's metadata task running (they would
    # reconnect to a returning broker from an abandoned producer), so they are closed here.
    # A stop cancelled half-way (the relay stopping mid-retry) must close them too, or their
    # sockets outlive the producer; the cancellation goes on once they are closed.
    try:
        await asyncio.wait_for(producer.stop(), 2.0)
    except (KafkaError, OSError, TimeoutError, asyncio.CancelledError) as error:
        log.debug("kafka producer stop: %r", error)
        sender = getattr(producer, "_sender", None)
        with contextlib.suppress(Exception):
            if sender is not None:
                await sender.close()
            await producer.client.close()
        if isinstance(error, asyncio.CancelledError):
            raise
