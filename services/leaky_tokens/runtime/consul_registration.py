"""Registers a service instance in Consul with a gRPC health check, and keeps it registered."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import consul
import consul.aio

log = logging.getLogger(__name__)


def consul_client(address: str) -> consul.aio.Consul:
    """An async Consul client for a host:port agent address."""
    host, _, port = address.rpartition(":")
    return consul.aio.Consul(host=host, port=int(port))


@dataclass(frozen=True)
class Registration:
    """What Consul is told about one instance."""

    service_id: str
    name: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)
    check_interval: str = "2s"
    check_timeout: str = "1s"
    deregister_after: str = "1m"  # Consul's minimum; its reaper runs every 30 s


class ConsulRegistrar:
    """Registers on start, re-registers whenever Consul has forgotten the instance (an agent
    restart, a deregistration after a long outage), and deregisters on graceful shutdown.
    Consul being down never stops the service from serving: it is retried in the background.
    """

    def __init__(
        self,
        consul_address: str,
        registration: Registration,
        recheck: float,
        call_timeout: float = 2.0,
    ) -> None:
        self._client = consul_client(consul_address)
        self._timeout = call_timeout
        self._registration = registration
        self._recheck = recheck
        self._task: asyncio.Task[None] | None = None
        self.registered = asyncio.Event()

    async def _register(self) -> None:
        r = self._registration
        await self._client.agent.service.register(
            r.name,
            service_id=r.service_id,
            address=r.address,
            port=r.port,
            tags=list(r.tags),
            meta=r.meta,
            check=consul.Check.grpc(
                f"{r.address}:{r.port}",
                r.check_interval,
                timeout=r.check_timeout,
                deregister=r.deregister_after,
            ),
        )
        log.info("registered in consul", extra={"service_id": r.service_id})
        self.registered.set()

    async def _keep_registered(self) -> None:
        warned = False
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    services = await self._client.agent.services()
                    if self._registration.service_id not in services:
                        await self._register()
                warned = False
            except Exception as error:  # Consul down or flaky: keep serving, retry later
                if not warned:
                    log.warning("consul unreachable; will retry", extra={"error": str(error)})
                    warned = True
            await asyncio.sleep(self._recheck)

    def start(self) -> None:
        """Begin registering in the background."""
        self._task = asyncio.create_task(self._keep_registered())

    async def _stop_rechecking(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def abandon(self) -> None:
        """Stop re-registering without deregistering: what a crash looks like to Consul.
        Only the HTTP client is closed; the registration stays for Consul's check to expire."""
        await self._stop_rechecking()
        await self._client.close()

    async def stop(self) -> None:
        """Stop re-registering and deregister (best effort: Consul may be gone)."""
        await self._stop_rechecking()
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.agent.service.deregister(self._registration.service_id)
            log.info("deregistered from consul")
        except Exception as error:  # shutting down anyway; the critical check will expire it
            log.warning("consul deregistration failed", extra={"error": str(error)})
        await self._client.close()
