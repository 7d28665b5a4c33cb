"""The analytics projection: `python -m leaky_tokens.analytics.projection_worker` (ADR 0039).

One process: a Faust app with one agent per projected topic (the token service's usage
topic and the purchase topic) writing batches into the UsageStore, a dead-letter producer,
a gRPC health server registered in Consul (`analytics-projection`) whose check fails while
the consumer is down or the projection is stalled on the store, and a Prometheus /metrics
port. Settings: LEAKY_ANALYTICS_PROJECTION_* (analytics/adapters/projection_settings.py).
"""

from __future__ import annotations

import logging
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
)
from leaky_tokens.analytics.adapters.projection_metrics import ProjectionMetrics
from leaky_tokens.analytics.adapters.projection_settings import ProjectionSettings
from leaky_tokens.analytics.domain.ports import UsageStore
from leaky_tokens.runtime import faust_worker
from leaky_tokens.runtime.faust_worker import FaustWorker, call_factory, load_callable
from leaky_tokens.runtime.settings import load

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
    what = f"{ENV_PREFIX}_STORE_FACTORY" if settings.store_factory else f"{ENV_PREFIX}_STORE"
    return cast(StoreFactory, load_callable(path, what))


async def open_store(factory: StoreFactory) -> UsageStore:
    """Call the factory (plain or async)."""
    return await call_factory(factory)


def stalled_gauge(
    metrics: ProjectionMetrics, watch: ProjectionWatch, stuck_after_s: float
) -> Callable[[], None]:
    """What the health reporter runs after each verdict: the stalled gauge set anew."""

    def observe() -> None:
        metrics.stalled.set(1 if watch.stalled(stuck_after_s) else 0)

    return observe


class ProjectionWorker(FaustWorker[ProjectionSettings]):
    """The projection's pieces on top of the shared worker: store, dead letters, metrics."""

    slug = SLUG
    label = "analytics projection"

    def __init__(
        self,
        settings: ProjectionSettings,
        store: UsageStore,
        datadir: Path,
        *,
        dead_letters: DeadLetterSink | None = None,
    ) -> None:
        s = settings
        self.store = store
        self.metrics = ProjectionMetrics()
        watch = ProjectionWatch()
        self.dead_letters = dead_letters or KafkaDeadLetters(
            s.kafka_bootstrap, s.dead_letter_topic, timeout_s=s.publish_timeout_ms / 1000
        )
        self.projector = Projector(
            store, self.dead_letters, self.metrics, watch,
            backoff_s=s.retry_backoff_ms / 1000, backoff_max_s=s.retry_backoff_max_ms / 1000,
        )  # fmt: skip
        config = FaustConfig(
            group=s.group, bootstrap=s.kafka_bootstrap, topics=(s.usage_topic, s.purchase_topic),
            datadir=datadir, batch_size=s.batch_size, batch_window_s=s.batch_window_ms / 1000,
            commit_interval_s=s.commit_interval_ms / 1000,
            session_timeout_s=s.session_timeout_ms / 1000,
        )  # fmt: skip
        super().__init__(
            settings, build_app(config, self.projector), watch,
            topics=(s.usage_topic, s.purchase_topic, s.dead_letter_topic),
            collectors=self.metrics.collectors,
            observe=stalled_gauge(self.metrics, watch, s.stuck_after_ms / 1000),
        )  # fmt: skip

    async def started(self) -> None:
        s, port = self.settings, self.server.port if self.server else 0
        log.info(
            "analytics projection running",
            extra={"health_address": f"{s.host}:{port}", "group": s.group,
                   "topics": [s.usage_topic, s.purchase_topic],
                   "dead_letter_topic": s.dead_letter_topic},
        )  # fmt: skip

    async def close(self) -> None:
        """The dead-letter producer, then the store."""
        await self.close_each((self.dead_letters.close, self.store.close))


def _prepare() -> tuple[ProjectionSettings, Callable[[Path], Awaitable[ProjectionWorker]]]:
    settings = load(ProjectionSettings, ENV_PREFIX)
    factory = store_factory(settings)

    async def build(datadir: Path) -> ProjectionWorker:
        return ProjectionWorker(settings, await open_store(factory), datadir)

    return settings, build


def main() -> int:
    """Entry point; a bad setting or a store that cannot be loaded exits 2 with one line."""
    return faust_worker.main(ProjectionWorker, _prepare, "analytics-projection")


if __name__ == "__main__":
    sys.exit(main())
