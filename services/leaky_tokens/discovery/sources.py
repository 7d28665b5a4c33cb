"""Where discovery learns endpoints: the port, and a fixed in-memory source beside Consul's."""

from __future__ import annotations

from typing import Protocol

from leaky_tokens.discovery.consul_catalog import Catalog, Endpoint


class EndpointSource(Protocol):
    """Keeps a Catalog up to date while started (ConsulWatcher is the production one)."""

    def start(self) -> None:
        """Begin filling the catalog (returns at once; the work runs as tasks)."""

    async def stop(self) -> None:
        """Stop and release connections."""


class FixedEndpoints:
    """Endpoints known up front (tests, or a deployment with no Consul): written once."""

    def __init__(self, catalog: Catalog, endpoints: dict[str, tuple[Endpoint, ...]]) -> None:
        self._catalog = catalog
        self._endpoints = endpoints

    def start(self) -> None:
        """Record every service's endpoints and mark the catalog synced."""
        for service, endpoints in self._endpoints.items():
            self._catalog.update(service, endpoints)
        self._catalog.synced.set()

    async def stop(self) -> None:
        """Nothing to release."""
