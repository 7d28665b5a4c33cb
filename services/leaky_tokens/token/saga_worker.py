"""The purchase saga's native runner: `python -m leaky_tokens.token.saga_worker` (ADR 0033).

One process: a Faust app with one agent per saga participant on the purchase topic, the
outbox relay (saga store -> Kafka), the periodic recovery of stuck sagas, and a gRPC health
server registered in Consul whose check fails while the consumer is stuck. Embedded
`leaky up` runs the same participants inside the token service instead (no Kafka).
Settings: LEAKY_TOKEN_SAGA_* (token/adapters/saga_settings.py).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

from leaky_tokens.runtime import faust_worker
from leaky_tokens.runtime.faust_worker import FaustWorker, call_factory, load_callable
from leaky_tokens.runtime.settings import load
from leaky_tokens.token.adapters.faust_saga import FaustConfig, HandleWatch, build_app
from leaky_tokens.token.adapters.kafka_event_bus import KafkaEventBus
from leaky_tokens.token.adapters.outbox_relay import OutboxRelay
from leaky_tokens.token.adapters.purchase_settings import PurchaseSagaSettings
from leaky_tokens.token.adapters.saga_contract import SagaParts
from leaky_tokens.token.adapters.saga_factory import build_saga_parts
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
    return cast(PartsFactory, load_callable(path, f"{ENV_PREFIX}_PARTS_FACTORY"))


async def build_parts(factory: PartsFactory) -> SagaParts:
    """Call the factory (plain or async)."""
    return await call_factory(factory)


class SagaWorker(FaustWorker[SagaWorkerSettings]):
    """The saga's pieces on top of the shared worker: the outbox relay and the recovery."""

    slug = SLUG
    label = "saga worker"

    def __init__(self, settings: SagaWorkerSettings, parts: SagaParts, datadir: Path) -> None:
        self.parts = parts
        watch = HandleWatch()
        s = settings
        config = FaustConfig(
            group=s.group, bootstrap=s.kafka_bootstrap, topic=s.topic, datadir=datadir,
            commit_interval_s=s.commit_interval_ms / 1000,
            session_timeout_s=s.session_timeout_ms / 1000, backoff_s=s.retry_backoff_ms / 1000,
            backoff_max_s=s.retry_backoff_max_ms / 1000,
        )  # fmt: skip
        super().__init__(
            settings, build_app(config, parts.participants, watch), watch, topics=(s.topic,),
            collectors=parts.collectors,  # the saga's metrics on /metrics when metrics_port is set
        )  # fmt: skip
        self.bus = KafkaEventBus(
            s.kafka_bootstrap, client_id="leaky-token-saga-outbox",
            timeout_s=s.publish_timeout_ms / 1000,
        )  # fmt: skip
        self.relay = OutboxRelay(
            parts.outbox, self.bus, batch=s.outbox_batch, poll_s=s.outbox_poll_ms / 1000,
            backoff_s=s.retry_backoff_ms / 1000, backoff_max_s=s.retry_backoff_max_ms / 1000,
        )  # fmt: skip
        self._recovery: asyncio.Task[None] | None = None

    async def started(self) -> None:
        """The outbox relay and the recovery loop, once the app consumes."""
        s, port = self.settings, self.server.port if self.server else 0
        self.relay.start()
        self._recovery = asyncio.create_task(self._recover(), name="saga-recovery")
        log.info(
            "saga worker running",
            extra={"health_address": f"{s.host}:{port}", "topic": s.topic,
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

    async def close(self) -> None:
        """Stop the relay and recovery, then close the bus and the parts' resources."""
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        await self.relay.stop()
        await self.bus.close()
        await self.close_each(resource.close for resource in self.parts.resources)


def _prepare() -> tuple[SagaWorkerSettings, Callable[[Path], Awaitable[SagaWorker]]]:
    settings = load(SagaWorkerSettings, ENV_PREFIX)
    factory = load_factory(settings.parts_factory)

    async def build(datadir: Path) -> SagaWorker:
        return SagaWorker(settings, await build_parts(factory), datadir)

    return settings, build


def main() -> int:
    """Entry point; a bad setting or a missing saga factory exits 2 with one line."""
    return faust_worker.main(SagaWorker, _prepare, "saga-worker")


if __name__ == "__main__":
    sys.exit(main())
