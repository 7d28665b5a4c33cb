"""The embedded bus: each batch appended to the event log file, then handed to in-process
subscribers (ADR 0038). The analytics service tails the file; the saga's participants, in this
process, subscribe as before."""

from __future__ import annotations

from collections.abc import Sequence

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky_tokens.runtime.event_log_file import Entry, EventLogFile, EventLogUnavailableError
from leaky_tokens.token.adapters.event_bus import InProcessEventBus, PublishError


class FileEventBus(InProcessEventBus):
    """An InProcessEventBus whose `publish` first appends the batch to `log`, in one
    transaction, durable before any subscriber sees it.

    A failed append raises PublishError and nobody saw the batch; a subscriber failing after
    the append also raises PublishError, and the caller publishes the batch again: the log
    then holds it twice, which its readers de-duplicate by event_id, as Kafka's consumers do.
    """

    def __init__(self, log: EventLogFile) -> None:
        super().__init__()
        self.log = log

    async def publish(self, topic: str, batch: Sequence[EventEnvelope]) -> None:
        if self._closed:
            raise PublishError("the event bus is closed")
        if not batch:
            return
        entries = [Entry(e.partition_key, e.event_id, e.SerializeToString()) for e in batch]
        try:
            await self.log.append(topic, entries)
        except EventLogUnavailableError as error:
            raise PublishError(f"the event log did not take the batch: {error}") from error
        await super().publish(topic, batch)

    async def close(self) -> None:
        await super().close()
        await self.log.close()
