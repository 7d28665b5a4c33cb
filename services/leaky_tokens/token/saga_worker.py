"""The purchase saga's native runner: `python -m leaky_tokens.token.saga_worker` (ADR 0033).

One process: a Faust app with one agent per saga participant on the purchase topic, the
outbox relay (saga store -> Kafka), the periodic recovery of stuck sagas, and a gRPC health
server registered in Consul whose check fails while the consumer is stuck. Embedded
`leaky up` runs the same participants inside the token service instead (no Kafka).
Settings: LEAKY_TOKEN_SAGA_* (token/adapters/saga_settings.py).
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

from leaky_tokens.runtime import logging as leaky_logging
from leaky_tokens.runtime.kafka_topics import ensure_topic_waiting
from leaky_tokens.runtime.paths import data_dir
from leaky_tokens.runtime.server import RunningServer, ServiceSpec, start_server
from leaky_tokens.runtime.settings import SettingsError, load
from leaky_tokens.token.adapters.faust_saga import (
    FaustConfig,
    HandleWatch,
    build_app,
    consumer_state,
)
from leaky_tokens.token.adapters.kafka_event_bus import KafkaEventBus
from leaky_tokens.token.adapters.outbox_relay import OutboxRelay
from leaky_tokens.token.adapters.purchase_settings import PurchaseSagaSettings
from leaky_tokens.token.adapters.saga_contract import SagaParts
from leaky_tokens.token.adapters.saga_factory import build_saga_parts
from leaky_tokens.token.adapters.saga_health import NOT_SERVING, HealthReporter
from leaky_tokens.token.adapters.saga_settings import SagaWorkerSettings

ENV_PREFIX = "LEAKY_TOKEN_SAGA"
SLUG = "token-saga"  # Consul service name and log `service`
log = logging.getLogger(__name__)
PartsFactory = Callable[[], SagaParts | Awaitable[SagaParts]]


async def token_saga_parts() -> SagaParts:
    """The saga's real participants, outbox and recovery, from the token's settings.

    The token service's own LEAKY_TOKEN_* settings (its database, decision store and policy):
    the worker credits the balances the token service reads.
    """
    return await build_saga_parts(load(PurchaseSagaSettings, "LEAKY_TOKEN"))


def load_factory(path: str) -> PartsFactory:
    """The `module:callable` a setting names (SettingsError when it does not resolve)."""
    module_name, _, attr = path.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise SettingsError(f"{ENV_PREFIX}_PARTS_FACTORY: cannot load {path!r}: {error}") from error
    if not callable(found):
        raise SettingsError(f"{ENV_PREFIX}_PARTS_FACTORY: {path!r} is not callable")
    return cast(PartsFactory, found)


async def build_parts(factory: PartsFactory) -> SagaParts:
    """Call the factory (plain or async)."""
    made = factory()
    return await made if inspect.isawaitable(made) else made


class SagaWorker:
    """The worker's pieces, started and stopped in order."""

    def __init__(self, settings: SagaWorkerSettings, parts: SagaParts, datadir: Path) -> None:
        self.settings = settings
        self.parts = parts
        self.watch = HandleWatch()
        s = settings
        config = FaustConfig(
            group=s.group, bootstrap=s.kafka_bootstrap, topic=s.topic, datadir=datadir,
            commit_interval_s=s.commit_interval_ms / 1000,
            session_timeout_s=s.session_timeout_ms / 1000, backoff_s=s.retry_backoff_ms / 1000,
            backoff_max_s=s.retry_backoff_max_ms / 1000,
        )  # fmt: skip
        self.app = build_app(config, parts.participants, self.watch)
        self.bus = KafkaEventBus(
            s.kafka_bootstrap, client_id="leaky-token-saga-outbox",
            timeout_s=s.publish_timeout_ms / 1000,
        )  # fmt: skip
        self.relay = OutboxRelay(
            parts.outbox, self.bus, batch=s.outbox_batch, poll_s=s.outbox_poll_ms / 1000,
            backoff_s=s.retry_backoff_ms / 1000, backoff_max_s=s.retry_backoff_max_ms / 1000,
        )  # fmt: skip
        self.server: RunningServer | None = None
        self.health: HealthReporter | None = None
        self._recovery: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Topic, health server (NOT_SERVING until the consumer joined), Faust, relay, recovery."""
        s = self.settings
        await ensure_topic_waiting(
            s.kafka_bootstrap, s.topic, s.topic_partitions, s.topic_replication,
            client_id="leaky-token-saga-admin",
        )  # fmt: skip
        spec = ServiceSpec(
            slug=SLUG,
            service_names=(),
            register=lambda server: None,
            collectors=tuple(self.parts.collectors),
        )  # the saga's metrics on /metrics when metrics_port is set
        self.server = await start_server(spec, s, None)
        await self.server.health.set("", NOT_SERVING)
        self.health = HealthReporter(
            self.server.health, lambda: consumer_state(self.app), self.watch,
            stuck_after_s=s.stuck_after_ms / 1000, interval_s=s.health_interval_ms / 1000,
        )  # fmt: skip
        self.health.start()
        await self.app.start()
        self.relay.start()
        self._recovery = asyncio.create_task(self._recover(), name="saga-recovery")
        log.info(
            "saga worker running",
            extra={"health_address": f"{s.host}:{self.server.port}", "topic": s.topic,
                   "group": s.group, "participants": [p.name for p in self.parts.participants]},
        )  # fmt: skip

    async def _recover(self) -> None:
        s = self.settings
        while True:
            try:
                if await self.parts.recovery.recover_stuck(s.recovery_batch):
                    self.relay.kick()  # recovery wrote to the outbox: publish it now
            except Exception:  # the store is down: the next pass tries again
                log.exception("saga recovery pass failed")
            await asyncio.sleep(s.recovery_interval_ms / 1000)

    async def stop(self) -> None:
        """Leave Consul, stop consuming (an unfinished handle is not acked), stop the relay
        and recovery, then close the bus and the parts' resources."""
        if self.server is not None:
            await self.server.stop(grace=1.0)
        if self.health is not None:
            await self.health.stop()
        with contextlib.suppress(Exception):
            await self.app.stop()
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        await self.relay.stop()
        await self.bus.close()
        for resource in self.parts.resources:
            try:
                await resource.close()
            except Exception:  # close the rest anyway
                log.exception("closing a saga resource failed")


class FaustCrashed(RuntimeError):
    """The Faust app crashed: the process exits so its supervisor restarts it."""


async def serve(settings: SagaWorkerSettings, factory: PartsFactory, datadir: Path) -> None:
    """Run until SIGTERM or SIGINT; raise FaustCrashed if the Faust app crashes (a crashed
    app consumes nothing and does not restart itself, while a new process rejoins)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parts = await build_parts(factory)
    worker = SagaWorker(settings, parts, datadir)
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
    """Entry point; a bad setting or a missing saga factory exits 2 with one line."""
    try:
        settings = load(SagaWorkerSettings, ENV_PREFIX)
        factory = load_factory(settings.parts_factory)
    except SettingsError as error:
        print(f"{SLUG}: bad setting: {error}", file=sys.stderr)
        return 2
    leaky_logging.configure(SLUG, settings.log_level)
    _quiet_libraries(settings.log_level)
    datadir = data_dir() / "saga-worker" / settings.group  # Faust insists on one; stays empty
    datadir.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings, factory, datadir))
    except SettingsError as error:  # the saga's own settings, read by its factory
        print(f"{SLUG}: bad setting: {error}", file=sys.stderr)
        return 2
    except FaustCrashed as error:
        log.error("saga worker exiting", extra={"reason": str(error)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
