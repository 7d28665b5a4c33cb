"""The saga's participants as Faust agents on the purchase topic: decode, handle, then ack.

Faust acks an event when its stream's generator moves on or is closed, also when the agent
body raised or was cancelled (streams.py, the `finally` after `yield`): an agent that lets a
handle's exception escape loses that event, and the supervisor restarts the agent on the
next one. So the agents iterate a `noack()` stream, retry a failing handle in place with a
doubling backoff, and ack by hand only once `handle` returned. A worker stopped or killed
mid-handle acked nothing: the event is redelivered from the last committed offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky_tokens.runtime.faust_worker import faust_app, raw_topic
from leaky_tokens.token.adapters import event_codec
from leaky_tokens.token.adapters.saga_contract import Participant

log = logging.getLogger(__name__)


@dataclass
class InFlight:
    """One handle not finished yet (retries included)."""

    event_id: str
    started: float  # monotonic
    attempts: int = 0


class HandleWatch:
    """What each agent is handling now and since when: the health check's evidence."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._now = monotonic
        self._in_flight: dict[str, InFlight] = {}
        self.handled: dict[str, int] = {}  # per participant, for logs and tests
        self.undecodable = 0

    @contextlib.contextmanager
    def handling(self, participant: str, event_id: str) -> Iterator[InFlight]:
        """Mark `participant` busy with `event_id` for the duration."""
        flight = InFlight(event_id, self._now())
        self._in_flight[participant] = flight
        try:
            yield flight
        finally:
            self._in_flight.pop(participant, None)

    def done(self, participant: str) -> None:
        """Count one handled event."""
        self.handled[participant] = self.handled.get(participant, 0) + 1

    def stuck(self, after_s: float) -> dict[str, InFlight]:
        """Participants whose current handle started more than `after_s` ago."""
        now = self._now()
        return {p: f for p, f in self._in_flight.items() if now - f.started > after_s}

    def reason(self, stuck_after_s: float) -> str:
        """The health verdict's part (runtime.faust_worker.Watch): the stuck handles."""
        return "; ".join(
            f"{name} has been handling {f.event_id} for over {stuck_after_s:g} s "
            f"({f.attempts} attempt(s))"
            for name, f in sorted(self.stuck(stuck_after_s).items())
        )


async def handle_until_done(
    participant: Participant,
    envelope: EventEnvelope,
    flight: InFlight,
    backoff_s: float,
    backoff_max_s: float,
) -> None:
    """`participant.handle(envelope)` until it returns; only cancellation stops it early."""
    wait = backoff_s
    while True:
        flight.attempts += 1
        try:
            await participant.handle(envelope)
            return
        except Exception as error:  # not done: the same envelope again, never the next one
            log.warning(
                "saga handle failed; retrying",
                extra={
                    "participant": participant.name,
                    "event_id": envelope.event_id,
                    "attempt": flight.attempts,
                    "retry_in_s": wait,
                    "error": f"{type(error).__name__}: {error}",
                },
            )
        await asyncio.sleep(wait)
        wait = min(wait * 2, backoff_max_s)


@dataclass(frozen=True)
class FaustConfig:
    """What the Faust app needs from the worker's settings."""

    group: str  # app id = consumer group
    bootstrap: str  # host:port,...
    topic: str
    datadir: Path
    commit_interval_s: float
    session_timeout_s: float
    backoff_s: float
    backoff_max_s: float


def build_app(
    config: FaustConfig, participants: Sequence[Participant], watch: HandleWatch
) -> faust.App:
    """A Faust app with one agent per participant, each reading the whole purchase topic.

    One app is one consumer group: Faust's conductor hands every message of the topic to each
    agent's stream and commits an offset only once every agent acked it (message refcount),
    so each participant sees every event and none is committed before all handled it.
    """
    app = faust_app(
        config.group, config.bootstrap, config.datadir,
        commit_interval_s=config.commit_interval_s, session_timeout_s=config.session_timeout_s,
        producer_acks=-1,
    )  # fmt: skip
    topic = raw_topic(app, config.topic)
    names = [p.name for p in participants]
    if len(set(names)) != len(names):
        raise ValueError(f"participant names must be unique, got {names}")
    for participant in participants:
        agent = _agent(participant, watch, config)
        app.agent(topic, name=f"saga-{participant.name}", concurrency=1)(agent)
    return app


def _agent(participant: Participant, watch: HandleWatch, config: FaustConfig) -> Any:
    async def run(stream: faust.Stream[bytes]) -> None:
        async for event in stream.noack().events():
            await _one(participant, event, watch, config)

    run.__name__ = run.__qualname__ = f"saga_{participant.name}"
    return run


async def _one(
    participant: Participant, event: faust.EventT[bytes], watch: HandleWatch, config: FaustConfig
) -> None:
    try:
        envelope = event_codec.decode(event.value)
    except event_codec.EventCodecError as error:
        # Never handleable: retrying would stop the partition for good. Logged, acked.
        watch.undecodable += 1
        log.error(
            "saga: undecodable event skipped",
            extra={"participant": participant.name, "offset": event.message.offset,
                   "error": str(error)},
        )  # fmt: skip
        event.ack()
        return
    with watch.handling(participant.name, envelope.event_id) as flight:
        await handle_until_done(
            participant, envelope, flight, config.backoff_s, config.backoff_max_s
        )
    event.ack()  # handled: the offset may now be committed
    watch.done(participant.name)
