"""Composition root of the discovery service: settings, catalog, endpoint source, EDS app."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from leaky_tokens.discovery.consul_catalog import Catalog, ConsulWatcher
from leaky_tokens.discovery.eds_server import make_app
from leaky_tokens.discovery.sources import EndpointSource
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


@dataclass
class DiscoveryComponents:
    """What the discovery process runs: the catalog, what fills it, and the EDS app."""

    catalog: Catalog
    source: EndpointSource
    app: web.Application


def build(
    settings: DiscoverySettings,
    *,
    catalog: Catalog | None = None,
    source: Callable[[Catalog], EndpointSource] | None = None,
) -> DiscoveryComponents:
    """Wire discovery; by default the catalog is filled from Consul (`settings.consul_address`)."""
    catalog = catalog if catalog is not None else Catalog()
    if source is None:
        endpoints: EndpointSource = ConsulWatcher(
            settings.consul_address, settings.services, catalog
        )
    else:
        endpoints = source(catalog)
    return DiscoveryComponents(catalog, endpoints, make_app(catalog))


@dataclass
class RunningDiscovery:
    """A started discovery service; `port` is the bound one (settings.port may be 0)."""

    components: DiscoveryComponents
    runner: web.AppRunner
    port: int

    async def stop(self) -> None:
        """Stop serving, then stop the endpoint source."""
        await self.runner.cleanup()
        await self.components.source.stop()


async def start(components: DiscoveryComponents, settings: DiscoverySettings) -> RunningDiscovery:
    """Start the endpoint source and serve EDS on settings.host:settings.port."""
    components.source.start()
    runner = web.AppRunner(components.app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    port = int(runner.addresses[0][1])
    return RunningDiscovery(components, runner, port)


async def serve(components: DiscoveryComponents, settings: DiscoverySettings) -> None:
    """Serve until SIGTERM/SIGINT, then stop cleanly."""
    running = await start(components, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await running.stop()
