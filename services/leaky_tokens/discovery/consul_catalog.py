"""Watches Consul's health API with blocking queries and keeps the last known endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from leaky_tokens.runtime.consul_registration import consul_client

log = logging.getLogger(__name__)

Endpoint = tuple[str, int]


@dataclass
class Catalog:
    """Passing instances per service; `version` changes whenever any set changes."""

    endpoints: dict[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    version: int = 0
    synced: asyncio.Event = field(default_factory=asyncio.Event)

    def update(self, service: str, endpoints: tuple[Endpoint, ...]) -> None:
        """Record a service's passing instances (sorted, so order never counts as change)."""
        ordered = tuple(sorted(endpoints))
        if self.endpoints.get(service) != ordered:
            self.endpoints[service] = ordered
            self.version += 1
            log.info("endpoints changed", extra={"service": service, "endpoints": ordered})


class ConsulWatcher:
    """One blocking-query loop per service. While Consul is unreachable the catalog keeps
    the last known endpoints (Envoy keeps serving them) and the loop retries with backoff."""

    def __init__(
        self, consul_address: str, services: tuple[str, ...], catalog: Catalog, wait: str = "30s"
    ) -> None:
        self._client = consul_client(consul_address)
        self._services = services
        self._catalog = catalog
        self._wait = wait
        self._tasks: list[asyncio.Task[None]] = []
        self._first: set[str] = set()

    async def _watch(self, service: str) -> None:
        index: str | None = None
        backoff = 0.5
        while True:
            try:
                new_index, nodes = await self._client.health.service(
                    service, index=index, wait=self._wait, passing=True
                )
                # An index that goes backwards (a restarted agent) must not be waited on.
                backwards = index is not None and int(new_index or 0) < int(index)
                index = None if backwards else new_index
                self._catalog.update(
                    service,
                    tuple(
                        (n["Service"]["Address"] or n["Node"]["Address"], int(n["Service"]["Port"]))
                        for n in nodes
                    ),
                )
                self._first.add(service)
                if self._first == set(self._services):
                    self._catalog.synced.set()
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Consul down: keep the last known endpoints
                log.warning(
                    "consul query failed; keeping last known endpoints",
                    extra={"service": service, "error": type(error).__name__},
                )
                index = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def start(self) -> None:
        """Start watching every service."""
        self._tasks = [asyncio.create_task(self._watch(s)) for s in self._services]

    async def stop(self) -> None:
        """Stop watching and close the client."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.close()
