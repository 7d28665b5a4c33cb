"""The analytics projection: `python -m leaky_tokens.analytics.projection_worker` (ADR 0039).

One process: a Faust app with one agent per projected topic (the token service's usage
topic and the purchase topic) writing batches into the UsageStore, a dead-letter producer,
a gRPC health server registered in Consul (`analytics-projection`) whose check fails while
the consumer is down or the projection is stalled on the store, and a Prometheus /metrics
port. Settings: LEAKY_ANALYTICS_PROJECTION_* (analytics/adapters/projection_settings.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

from leaky_tokens.analytics.adapters.dead_letters import DeadLetterSink, KafkaDeadLetters
from leaky_tokens.analytics.adapters.faust_projection import (
    FaustConfig,
    ProjectionWatch,
    Projector,
    build_app,
    consumer_state,
)
from leaky_tokens.analytics.adapters.projection_health import NOT_SERVING, HealthReporter
from leaky_tokens.analytics.adapters.projection_metrics import ProjectionMetrics
from leaky_tokens.analytics.adapters.projection_settings import ProjectionSettings
from leaky_tokens.analytics.domain.ports import UsageStore
from leaky_tokens.runtime import logging as leaky_logging
from leaky_tokens.runtime.kafka_topics import ensure_topic_waiting
from leaky_tokens.runtime.paths import data_dir
from leaky_tokens.runtime.server import RunningServer, ServiceSpec, start_server
from leaky_tokens.runtime.settings import SettingsError, load

ENV_PREFIX = "LEAKY_ANALYTICS_PROJECTION"
SLUG = "analytics-projection"  # Consul service name and log `service`
log = logging.getLogger(__name__)
StoreFactory = Callable[[], UsageStore | Awaitable[UsageStore]]

# The real stores, by `store` (each reads its own settings, the analytics service's).
STORES = {
    "cassandra": "leaky_tokens.analytics.adapters.store_openers:open_cassandra",
    "sqlite": "leaky_tokens.analytics.adapters.store_openers:open_sqlite",
}


def store_factory(settings: ProjectionSettings) -> StoreFactory:
    """The one place a store is chosen: `store_factory` if set, else the `store` named.

    SettingsError when it does not resolve to a callable.
    """
    path = settings.store_factory or STORES[settings.store]
    module_name, _, attr = path.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise SettingsError(f"store {path!r} cannot be loaded: {error}") from error
    if not callable(found):
        raise SettingsError(f"store {path!r} is not callable")
    return cast(StoreFactory, found)


async def open_store(factory: StoreFactory) -> UsageStore:
    """Call the factory (plain or async)."""
    made = factory()
    return await made if inspect.isawaitable(made) else made


class ProjectionWorker:
    """The worker's pieces, started and stopped in order."""

    def __init__(
        self,
        settings: ProjectionSettings,
        store: UsageStore,
        datadir: Path,
        *,
        dead_letters: DeadLetterSink | None = None,
    ) -> None:
        s = settings
        self.settings = settings
        self.store = store
        self.metrics = ProjectionMetrics()
        self.watch = ProjectionWatch()
        self.dead_letters = dead_letters or KafkaDeadLetters(
            s.kafka_bootstrap, s.dead_letter_topic, timeout_s=s.publish_timeout_ms / 1000
        )
        self.projector = Projector(
            store, self.dead_letters, self.metrics, self.watch,
            backoff_s=s.retry_backoff_ms / 1000, backoff_max_s=s.retry_backoff_max_ms / 1000,
        )  # fmt: skip
        config = FaustConfig(
            group=s.group, bootstrap=s.kafka_bootstrap, topics=(s.usage_topic, s.purchase_topic),
            datadir=datadir, batch_size=s.batch_size, batch_window_s=s.batch_window_ms / 1000,
            commit_interval_s=s.commit_interval_ms / 1000,
            session_timeout_s=s.session_timeout_ms / 1000,
        )  # fmt: skip
        self.app = build_app(config, self.projector)
        self.server: RunningServer | None = None
        self.health: HealthReporter | None = None

    async def start(self) -> None:
        """Topics, health server (NOT_SERVING until the consumer joined) and /metrics, Faust."""
        s = self.settings
        for topic in (s.usage_topic, s.purchase_topic, s.dead_letter_topic):
            await ensure_topic_waiting(
                s.kafka_bootstrap, topic, s.topic_partitions, s.topic_replication,
                client_id="leaky-analytics-projection-admin",
            )  # fmt: skip
        spec = ServiceSpec(
            slug=SLUG, service_names=(), register=lambda server: None,
            collectors=self.metrics.collectors,
        )  # fmt: skip
        self.server = await start_server(spec, s, None)
        await self.server.health.set("", NOT_SERVING)
        self.health = HealthReporter(
            self.server.health, lambda: consumer_state(self.app), self.watch, self.metrics,
            stuck_after_s=s.stuck_after_ms / 1000, interval_s=s.health_interval_ms / 1000,
        )  # fmt: skip
        self.health.start()
        await self.app.start()
        log.info(
            "analytics projection running",
            extra={"health_address": f"{s.host}:{self.server.port}", "group": s.group,
                   "topics": [s.usage_topic, s.purchase_topic],
                   "dead_letter_topic": s.dead_letter_topic},
        )  # fmt: skip

    async def stop(self) -> None:
        """Leave Consul, stop consuming (an unfinished batch is not acked), close the rest."""
        if self.server is not None:
            await self.server.stop(grace=1.0)
        if self.health is not None:
            await self.health.stop()
        with contextlib.suppress(Exception):
            await self.app.stop()
        for closing in (self.dead_letters.close, self.store.close):
            try:
                await closing()
            except Exception:  # close the rest anyway
                log.exception("closing a projection resource failed")


class FaustCrashed(RuntimeError):
    """The Faust app crashed: the process exits so its supervisor restarts it."""


async def serve(settings: ProjectionSettings, factory: StoreFactory, datadir: Path) -> None:
    """Run until SIGTERM or SIGINT; raise FaustCrashed if the Faust app crashes."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = ProjectionWorker(settings, await open_store(factory), datadir)
    try:
        await worker.start()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.health_interval_ms / 1000)
            if worker.app.crashed:
                raise FaustCrashed(f"the Faust app crashed: {worker.app.crash_reason!r}")
    finally:
        await worker.stop()


def _quiet_libraries(level: str) -> None:
    # Faust and aiokafka narrate every rebalance and fetch at INFO; their warnings stay.
    if level.upper() != "DEBUG":
        for name in ("faust", "mode", "aiokafka"):
            logging.getLogger(name).setLevel(logging.WARNING)


def main() -> int:
    """Entry point; a bad setting or a store that cannot be loaded exits 2 with one line."""
    try:
        settings = load(ProjectionSettings, ENV_PREFIX)
        factory = store_factory(settings)
    except SettingsError as error:
        print(f"{SLUG}: bad setting: {error}", file=sys.stderr)
        return 2
    leaky_logging.configure(SLUG, settings.log_level)
    _quiet_libraries(settings.log_level)
    datadir = data_dir() / "analytics-projection" / settings.group  # Faust wants one; empty
    datadir.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings, factory, datadir))
    except SettingsError as error:  # the store's own settings, read by its factory
        print(f"{SLUG}: bad setting: {error}", file=sys.stderr)
        return 2
    except FaustCrashed as error:
        log.error("analytics projection exiting", extra={"reason": str(error)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
