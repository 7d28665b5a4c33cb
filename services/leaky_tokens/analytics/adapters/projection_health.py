"""The projection worker's health: NOT_SERVING while its consumer is down or it is stalled."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2

from leaky_tokens.analytics.adapters.faust_projection import ConsumerState, ProjectionWatch
from leaky_tokens.analytics.adapters.projection_metrics import ProjectionMetrics

log = logging.getLogger(__name__)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def verdict(
    state: ConsumerState, watch: ProjectionWatch, rebalancing_for_s: float, stuck_after_s: float
) -> str:
    """Why the worker is unhealthy, or "" when it is healthy."""
    if not state.running:
        return "the Kafka consumer is not running"
    if not state.joined:
        return "the consumer has not joined its group yet"
    if state.rebalancing and rebalancing_for_s > stuck_after_s:
        return f"the consumer has been rebalancing for over {stuck_after_s:g} s"
    stalled = watch.stalled(stuck_after_s)
    if stalled:
        return "; ".join(
            f"{topic}: the {c.what} call "
            + (f"failed {c.failures} time(s), last {c.error}" if c.failures else "hangs")
            for topic, c in sorted(stalled.items())
        )
    return ""


class HealthReporter:
    """Re-evaluates the verdict every `interval_s`, sets the gRPC health of the whole server
    ("" = what Consul's gRPC check probes) and the stalled gauge; logs each change once."""

    def __init__(
        self,
        health: health_aio.HealthServicer,
        state: Callable[[], ConsumerState],
        watch: ProjectionWatch,
        metrics: ProjectionMetrics,
        *,
        stuck_after_s: float,
        interval_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._health = health
        self._state = state
        self._watch = watch
        self._metrics = metrics
        self._stuck_after = stuck_after_s
        self._interval = interval_s
        self._now = monotonic
        self._rebalancing_since: float | None = None
        self._task: asyncio.Task[None] | None = None
        self.reason: str | None = None  # None: not evaluated yet

    async def evaluate(self) -> str:
        """One evaluation; returns (and publishes) the reason, "" when healthy."""
        state = self._state()
        if state.rebalancing:
            self._rebalancing_since = self._rebalancing_since or self._now()
        else:
            self._rebalancing_since = None
        since = self._now() - self._rebalancing_since if self._rebalancing_since else 0.0
        reason = verdict(state, self._watch, since, self._stuck_after)
        self._metrics.stalled.set(1 if self._watch.stalled(self._stuck_after) else 0)
        if reason != self.reason:
            if reason:
                log.warning("analytics projection unhealthy", extra={"reason": reason})
            else:
                log.info("analytics projection healthy")
            await self._health.set("", NOT_SERVING if reason else SERVING)
            self.reason = reason
        return reason

    def start(self) -> None:
        """Evaluate periodically until `stop()`."""
        self._task = asyncio.create_task(self._loop(), name="projection-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.evaluate()
            except Exception:  # a failed evaluation must not end health reporting
                log.exception("projection health evaluation failed")
            await asyncio.sleep(self._interval)
