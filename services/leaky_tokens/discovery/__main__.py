"""`python -m leaky_tokens.discovery`: serve Envoy the instances Consul knows."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field

from aiohttp import web

from leaky_tokens.discovery.consul_catalog import Catalog, ConsulWatcher
from leaky_tokens.discovery.eds_server import make_app
from leaky_tokens.runtime import logging as leaky_logging
from leaky_tokens.runtime import settings as settings_mod
from leaky_tokens.runtime.settings import doc
from leaky_tokens.topology import slugs

ENV_PREFIX = "LEAKY_DISCOVERY"


@dataclass(frozen=True)
class DiscoverySettings:
    """Discovery settings (LEAKY_DISCOVERY_<FIELD>)."""

    host: str = field(default="127.0.0.1", metadata=doc("Address the EDS endpoint binds."))
    port: int = field(default=18000, metadata=doc("Port Envoy polls for endpoints."))
    consul_address: str = field(default="127.0.0.1:8500", metadata=doc("Consul agent host:port."))
    services: tuple[str, ...] = field(
        default=slugs(),
        metadata=doc("Consul service names to watch (comma-separated)."),
    )
    log_level: str = field(default="INFO", metadata=doc("Log level."))


async def serve(settings: DiscoverySettings) -> None:
    """Watch Consul and serve EDS until SIGTERM/SIGINT."""
    catalog = Catalog()
    watcher = ConsulWatcher(settings.consul_address, settings.services, catalog)
    watcher.start()
    runner = web.AppRunner(make_app(catalog), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await watcher.stop()


def main() -> None:
    """Entry point."""
    config = settings_mod.load(DiscoverySettings, ENV_PREFIX)
    leaky_logging.configure("discovery", config.log_level)
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
