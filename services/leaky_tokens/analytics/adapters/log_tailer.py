"""The embedded projection: the event log file -> the SQLite usage store (ADR 0038).

Kafka and Faust's part in `leaky up`: each topic of the log is read from the position the
store recorded, decoded into facts, and projected with the new position in one transaction,
so a crash anywhere resumes exactly where the last commit left off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.registry import Collector

from leaky_tokens.analytics.adapters.event_facts import PoisonEventError, decode, fact_of
from leaky_tokens.analytics.adapters.projection_metrics import (
    ProjectionMetrics as WorkerProjectionMetrics,
)
from leaky_tokens.analytics.adapters.sqlite_usage_store import (
    DeadLetter,
    SqliteUsageStore,
    open_sqlite_usage_store,
)
from leaky_tokens.analytics.domain.facts import SourcedFact
from leaky_tokens.runtime import paths
from leaky_tokens.runtime.event_log_file import EventLogFile, EventLogSettings, LogRecord
from leaky_tokens.runtime.settings import SettingsError, doc

log = logging.getLogger(__name__)
PARTITION = 0  # the log file has one partition per topic
STOP_SECONDS = 5.0
EXPIRE_EVERY_S = 60.0  # how often expired raw rows are deleted


@dataclass(frozen=True)
class EmbeddedProjectionSettings(EventLogSettings):
    """The embedded projection's settings (the analytics service's, LEAKY_ANALYTICS_<FIELD>)."""

    embedded_database_url: str = field(
        default="",
        metadata=doc(
            "Embedded mode: SQLAlchemy URL of the analytics SQLite database "
            "(sqlite+aiosqlite:///...); empty = analytics.db in LEAKY_DATA_DIR."
        ),
    )
    usage_topic: str = field(
        default="leaky.usage.v1",
        metadata=doc(
            "Topic of the token service's usage events; `leaky up` sets it to"
            " LEAKY_TOKEN_EVENTS_USAGE_TOPIC when only that is set."
        ),
    )
    purchase_topic: str = field(
        default="leaky.purchase.v1",
        metadata=doc(
            "Topic of the purchase saga's events; `leaky up` sets it to LEAKY_TOKEN_SAGA_TOPIC"
            " when only that is set."
        ),
    )
    embedded_poll_ms: int = field(
        default=200,
        metadata=doc("Embedded mode: how long the projection waits when the log has nothing new."),
    )
    embedded_batch: int = field(
        default=1000, metadata=doc("Embedded mode: most log records projected in one transaction.")
    )
    embedded_backoff_ms: int = field(
        default=200,
        metadata=doc("Embedded mode: first wait after a failed projection pass; doubles."),
    )
    embedded_backoff_max_ms: int = field(
        default=10_000, metadata=doc("Embedded mode: longest wait between failed passes.")
    )
    raw_ttl_seconds: float = field(
        default=7 * 24 * 3600.0,
        metadata=doc(
            "How long raw usage events are kept after projection (Usage's latest events and "
            "de-duplication); rollups are kept."
        ),
    )

    def __post_init__(self) -> None:
        EventLogSettings.__post_init__(self)
        for name in (
            "embedded_poll_ms",
            "embedded_batch",
            "embedded_backoff_ms",
            "embedded_backoff_max_ms",
            "raw_ttl_seconds",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.embedded_backoff_max_ms < self.embedded_backoff_ms:
            raise SettingsError("embedded_backoff_max_ms: must not be below embedded_backoff_ms")

    def database_url(self) -> str:
        """The analytics database: the setting, else analytics.db in the data directory."""
        return self.embedded_database_url or paths.sqlite_url("analytics.db")


class ProjectionMetrics(WorkerProjectionMetrics):
    """The projection worker's families (lag, facts, dead letters per topic; stalled), so the
    dashboard and alerts read embedded and native alike, plus the failed passes. Lag here is
    how far the tail is behind the newest record of the log's topic."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.failures = Counter(
            "leaky_analytics_projection_failures",
            "Projection passes that failed (the log or the store away); retried.",
            registry=registry,
        )

    @property
    def collectors(self) -> tuple[Collector, ...]:
        return (*super().collectors, self.failures)


def decode_batch(
    records: Sequence[LogRecord],
) -> tuple[list[SourcedFact], list[DeadLetter]]:
    """The facts the records carry (ignored events give none) and the poison among them."""
    facts: list[SourcedFact] = []
    dead: list[DeadLetter] = []
    for record in records:
        try:
            fact = fact_of(decode(record.value))
        except PoisonEventError as error:
            log.warning(
                "analytics: poison record %s@%d skipped: %s", record.topic, record.seq, error.reason
            )
            dead.append(DeadLetter(record.topic, PARTITION, record.seq, error.reason, record.value))
            continue
        if fact is not None:
            facts.append(SourcedFact(record.topic, PARTITION, record.seq, fact))
    return facts, dead


class LogTailer:
    """Tails `topics` of the log into the store; `start()` runs it, `stop()` ends it.

    A pass reads each topic from the store's position, projects up to `batch` records with
    the new position (one transaction), and repeats while records keep coming. A failure (the
    log or the store away) projects nothing of that batch: the loop waits a doubling backoff
    and reads the same records again. Records retention deleted before they were read are
    reported (logged) once: they are lost to the projection, as with Kafka's retention.
    """

    def __init__(
        self,
        log_file: EventLogFile,
        store: SqliteUsageStore,
        topics: Sequence[str],
        *,
        batch: int = 1000,
        poll_s: float = 0.2,
        backoff_s: float = 0.2,
        backoff_max_s: float = 10.0,
        metrics: ProjectionMetrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log, self.store = log_file, store
        self._topics = tuple(topics)
        self._batch, self._poll_s = batch, poll_s
        self._backoff_s, self._backoff_max_s = backoff_s, backoff_max_s
        self.metrics = metrics or ProjectionMetrics()
        for topic in self._topics:  # every series exported from the start, at 0
            self.metrics.projected.labels(topic)
            self.metrics.dead_letters.labels(topic)
        self._monotonic = monotonic
        self._expired_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()

    async def run_once(self) -> int:
        """Project everything the log holds now; how many records were consumed."""
        consumed = 0
        lags = dict.fromkeys(self._topics, 0)
        for topic in self._topics:
            await self._check_replaced(topic)
            while not self._stopping:
                after = await self.store.position(topic, PARTITION)
                await self._check_truncation(topic, after)
                records = await self.log.read(topic, after, self._batch)
                if not records:
                    break
                facts, dead = decode_batch(records)
                await self.store.apply(facts, dead, {(topic, PARTITION): records[-1].seq})
                consumed += len(records)
                self.metrics.projected.labels(topic).inc(len(records))
                if dead:
                    self.metrics.dead_letters.labels(topic).inc(len(dead))
                # Kept current while a backlog drains, not only once it has.
                lags[topic] = await self.log.lag_ms(topic, records[-1].seq)
                self.metrics.lag.labels(topic).set(lags[topic] / 1000)
                if len(records) < self._batch:
                    break
            lags[topic] = await self.log.lag_ms(topic, await self.store.position(topic))
            self.metrics.lag.labels(topic).set(lags[topic] / 1000)
        await self._expire()
        return consumed

    def kick(self) -> None:
        """Run a pass now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        """Run passes in a background task until `stop()`."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._loop(), name="analytics-log-tailer")

    async def stop(self) -> None:
        """Finish the pass in progress (up to STOP_SECONDS), then stop."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=STOP_SECONDS)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        backoff = self._backoff_s
        while not self._stopping:
            self._wake.clear()
            try:
                await self.run_once()
                self.metrics.stalled.set(0)
                backoff, wait = self._backoff_s, self._poll_s
            except Exception:  # the log or the store away: nothing of the batch committed
                self.metrics.failures.inc()
                self.metrics.stalled.set(1)
                log.exception("analytics: projection pass failed, retrying in %.1f s", backoff)
                wait, backoff = backoff, min(backoff * 2, self._backoff_max_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _check_replaced(self, topic: str) -> None:
        """Start `topic` again from 0 when the store's position is past anything the log file
        ever held: the file was deleted and created anew (its offsets restart at 1), and
        without this every record up to the old position would be skipped unread."""
        after = await self.store.position(topic, PARTITION)
        if after and await self.log.high_water(topic) < after:
            log.error(
                "analytics: the event log holds no %s record up to %d, where the projection "
                "stood: the file was replaced; projecting it from the start",
                topic,
                after,
            )
            await self.store.rewind(topic, PARTITION)

    async def _check_truncation(self, topic: str, after: int) -> None:
        through = await self.log.truncated_through(topic)
        if through > after:
            log.error(
                "analytics: the event log's retention deleted %s records up to %d before they "
                "were projected (projected up to %d); resuming after them",
                topic,
                through,
                after,
            )
            await self.store.apply((), (), {(topic, PARTITION): through})

    async def _expire(self) -> None:
        now = self._monotonic()
        if self._expired_at is not None and now - self._expired_at < EXPIRE_EVERY_S:
            return
        self._expired_at = now
        expired = await self.store.expire_raw()
        if expired:
            log.info("analytics: %d raw usage events expired", expired)


@dataclass
class EmbeddedProjection:
    """The embedded store and the tailer feeding it: the bootstrap serves queries from `store`
    and exports `metrics.collectors`."""

    store: SqliteUsageStore
    tailer: LogTailer

    @property
    def collectors(self) -> tuple[Collector, ...]:
        return self.tailer.metrics.collectors

    def start(self) -> None:
        self.tailer.start()

    async def close(self) -> None:
        """Stop tailing, then close the log and the store."""
        await self.tailer.stop()
        await self.tailer.log.close()
        await self.store.close()


async def embedded_projection(
    settings: EmbeddedProjectionSettings,
    *,
    now_ms: Callable[[], int] | None = None,
    registry: CollectorRegistry | None = None,
) -> EmbeddedProjection:
    """Open (and migrate) the analytics database and the event log; `start()` tails it."""
    store = await open_sqlite_usage_store(
        settings.database_url(), raw_ttl_seconds=settings.raw_ttl_seconds, now_ms=now_ms
    )
    tailer = LogTailer(
        EventLogFile.open(settings),
        store,
        (settings.usage_topic, settings.purchase_topic),
        batch=settings.embedded_batch,
        poll_s=settings.embedded_poll_ms / 1000,
        backoff_s=settings.embedded_backoff_ms / 1000,
        backoff_max_s=settings.embedded_backoff_max_ms / 1000,
        metrics=ProjectionMetrics(registry),
    )
    return EmbeddedProjection(store, tailer)
