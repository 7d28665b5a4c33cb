"""The usage and purchase topics projected into the UsageStore by Faust agents (ADR 0039).

At least once, as the saga's agents (ADR 0033): each agent reads batches with
`stream.noack_take(batch_size, within)`, which never acks by itself, not even when the agent
is cancelled or raises (unlike `take`/`take_events`, whose `finally` acks the batch). A batch
is decoded, its facts handed to `UsageStore.project` (retried in place with a doubling
backoff while it raises: the store is down), its poison messages published to the
dead-letter topic (retried likewise), and only then is every message of the batch acked.
A worker stopped, rebalanced or killed mid-batch acked nothing of it: the batch comes again
from the last committed offset, and the store ignores the facts it already has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust

from leaky_tokens.analytics.adapters.dead_letters import DeadLetter, DeadLetterSink
from leaky_tokens.analytics.adapters.event_facts import PoisonEventError, decode, fact_of
from leaky_tokens.analytics.adapters.projection_metrics import ProjectionMetrics
from leaky_tokens.analytics.domain.facts import SourcedFact
from leaky_tokens.analytics.domain.ports import UsageStore
from leaky_tokens.runtime.faust_worker import faust_app, raw_topic

log = logging.getLogger(__name__)


@dataclass
class Call:
    """One store (or dead-letter) call not finished yet, retries included."""

    what: str  # "store" or "dead-letter"
    started: float  # monotonic
    failures: int = 0
    error: str = ""


class ProjectionWatch:
    """What each topic's agent waits on and since when: the health check's evidence."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._now = monotonic
        self._calls: dict[str, Call] = {}
        self.batches: dict[str, int] = {}  # batches fully acked, per topic

    @contextlib.contextmanager
    def calling(self, topic: str, what: str) -> Iterator[Call]:
        """Mark `topic`'s agent busy with a call for the duration."""
        call = Call(what, self._now())
        self._calls[topic] = call
        try:
            yield call
        finally:
            self._calls.pop(topic, None)

    def stalled(self, after_s: float) -> dict[str, Call]:
        """Topics whose current call failed at least once, or has run over `after_s`."""
        now = self._now()
        return {t: c for t, c in self._calls.items() if c.failures or now - c.started > after_s}

    def reason(self, stuck_after_s: float) -> str:
        """The health verdict's part (runtime.faust_worker.Watch): the stalled topics."""
        return "; ".join(
            f"{topic}: the {c.what} call "
            + (f"failed {c.failures} time(s), last {c.error}" if c.failures else "hangs")
            for topic, c in sorted(self.stalled(stuck_after_s).items())
        )


class Projector:
    """Decodes a batch, projects its facts, dead-letters its poison, then acks it."""

    def __init__(
        self,
        store: UsageStore,
        dead_letters: DeadLetterSink,
        metrics: ProjectionMetrics,
        watch: ProjectionWatch,
        *,
        backoff_s: float,
        backoff_max_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._dead = dead_letters
        self.metrics = metrics
        self.watch = watch
        self._backoff = backoff_s
        self._backoff_max = backoff_max_s
        self._clock = clock

    async def project_batch(self, topic: str, events: Sequence[faust.EventT[Any]]) -> None:
        """Project then ack `events` (one topic's, in delivery order); returns only when done
        (only cancellation ends it early, and then nothing was acked)."""
        facts: list[SourcedFact] = []
        letters: list[DeadLetter] = []
        for event in events:
            message = event.message
            try:
                fact = fact_of(_envelope(message.value))
            except PoisonEventError as error:
                letters.append(_letter(message, error.reason))
                continue
            if fact is not None:
                facts.append(SourcedFact(message.topic, message.partition, message.offset, fact))
        if facts:
            await self._until_done(topic, "store", lambda: self._store.project(facts))
            self.metrics.projected.labels(topic).inc(len(facts))
            lag = self._clock() - facts[-1].fact.occurred_at_ms / 1000
            self.metrics.lag.labels(topic).set(max(lag, 0.0))
        if letters:
            await self._until_done(topic, "dead-letter", lambda: self._dead.publish(letters))
            self.metrics.dead_letters.labels(topic).inc(len(letters))
            for letter in letters:
                log.error(
                    "analytics projection: message dead-lettered",
                    extra={"topic": letter.topic, "partition": letter.partition,
                           "offset": letter.offset, "reason": letter.reason},
                )  # fmt: skip
        for event in events:
            event.ack()  # done: the offset may now be committed
        self.watch.batches[topic] = self.watch.batches.get(topic, 0) + 1

    async def _until_done(self, topic: str, what: str, call: Callable[[], Awaitable[None]]) -> None:
        wait = self._backoff
        with self.watch.calling(topic, what) as current:
            while True:
                try:
                    await call()
                except Exception as error:  # not done: the same batch again, never the next
                    current.failures += 1
                    current.error = f"{type(error).__name__}: {error}"
                    self.metrics.stalled.set(1)
                    log.warning(
                        "analytics projection stalled; retrying",
                        extra={"topic": topic, "call": what, "attempt": current.failures,
                               "retry_in_s": wait, "error": current.error},
                    )  # fmt: skip
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, self._backoff_max)
                    continue
                if current.failures:
                    log.info(
                        "analytics projection resumed",
                        extra={"topic": topic, "call": what, "failures": current.failures},
                    )
                break
        if not self.watch.stalled(float("inf")):
            self.metrics.stalled.set(0)


def _envelope(value: bytes | None) -> Any:
    if value is None:
        raise PoisonEventError("no value (a tombstone)")
    return decode(value)


def _letter(message: Any, reason: str) -> DeadLetter:
    headers = tuple((str(k), bytes(v or b"")) for k, v in _header_items(message.headers))
    return DeadLetter(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=headers,
        reason=reason,
    )


def _header_items(headers: Any) -> list[tuple[Any, Any]]:
    if not headers:
        return []
    if isinstance(headers, dict):
        return list(headers.items())
    return list(headers)


@dataclass(frozen=True)
class FaustConfig:
    """What the Faust app needs from the worker's settings."""

    group: str  # app id = consumer group
    bootstrap: str  # host:port,...
    topics: tuple[str, ...]  # one agent each
    datadir: Path
    batch_size: int
    batch_window_s: float
    commit_interval_s: float
    session_timeout_s: float


def build_app(config: FaustConfig, projector: Projector) -> faust.App:
    """A Faust app with one agent per topic (concurrency 1: per-partition order is kept)."""
    app = faust_app(
        config.group, config.bootstrap, config.datadir,
        commit_interval_s=config.commit_interval_s, session_timeout_s=config.session_timeout_s,
    )  # fmt: skip
    for name in config.topics:
        agent = _agent(name, projector, config)
        app.agent(raw_topic(app, name), name=f"analytics-project-{name}", concurrency=1)(agent)
    return app


def _agent(topic: str, projector: Projector, config: FaustConfig) -> Any:
    async def run(stream: faust.Stream[bytes]) -> None:
        async for events in stream.noack_take(config.batch_size, within=config.batch_window_s):
            await projector.project_batch(topic, events)  # type: ignore[arg-type]

    run.__name__ = run.__qualname__ = "project_" + topic.replace(".", "_").replace("-", "_")
    return run
