"""The in-process event log of embedded mode: append, read after a position, ack (forget)."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from leaky_tokens.token.domain.decision import Level
from leaky_tokens.token.domain.ports import EventKind, StoredEvent, Subject, UsageEvent


def usage_event(
    kind: EventKind,
    event_id: str,
    subject: Subject,
    tokens: int,
    now_ms: int,
    cause: str,
    levels: tuple[Level, ...],
    reason: str | None = None,
    overage: Mapping[Level, int] | None = None,
    **details: Any,
) -> UsageEvent:
    """One event of `subject` at `now_ms`; `details` are UsageEvent's optional fields."""
    return UsageEvent(
        event_id, kind, now_ms, subject.tenant, subject.user_id, subject.org_id,
        subject.provider, tokens, cause, levels, reason,
        MappingProxyType(dict(overage or {})), **details,
    )  # fmt: skip


class InProcessEventLog:
    """Events in order with increasing integer positions; acked ones are dropped.

    Not locked itself: its owner appends inside its own atomic step.
    """

    def __init__(self) -> None:
        self._events: deque[StoredEvent] = deque()
        self._position = 0

    def append(self, event: UsageEvent) -> None:
        """Record one event at the next position."""
        self._position += 1
        self._events.append(StoredEvent(str(self._position), event))

    @property
    def pending(self) -> int:
        """Events not acknowledged yet."""
        return len(self._events)

    def read(self, after: str, limit: int) -> list[StoredEvent]:
        """Up to `limit` events after position `after` ("" or "0": from the start)."""
        start = int(after or 0)
        return [e for e in self._events if int(e.position) > start][:limit]

    def ack(self, upto: str) -> int:
        """Drop the events up to and including position `upto`; returns how many."""
        last, dropped = int(upto or 0), 0
        while self._events and int(self._events[0].position) <= last:
            self._events.popleft()
            dropped += 1
        return dropped
