"""Runs one service process: settings, logging, build, serve until signalled, clean up."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from leaky_tokens.runtime import logging as leaky_logging
from leaky_tokens.runtime import settings as settings_mod
from leaky_tokens.runtime.jwt_verifier import JwtVerifier
from leaky_tokens.runtime.server import (
    ServerSettings,
    ServiceSpec,
    serve_until_signalled,
    start_server,
)


class Components(Protocol):
    """What a service's bootstrap builds."""

    @property
    def spec(self) -> ServiceSpec:
        """Servicers and public RPCs."""

    @property
    def verifier(self) -> JwtVerifier | None:
        """Verifier of callers' tokens (None for a server with no protected RPC)."""

    async def close(self) -> None:
        """Release connections."""


S = TypeVar("S", bound=ServerSettings)


def run_service(
    slug: str,
    settings_cls: type[S],
    env_prefix: str,
    build: Callable[[S], Awaitable[Components]],
) -> None:
    """Load settings, configure logs, build the service and serve it until SIGTERM/SIGINT."""
    try:
        config = settings_mod.load(settings_cls, env_prefix)
    except settings_mod.SettingsError as error:
        sys.exit(f"{slug}: bad setting: {error}")
    leaky_logging.configure(slug, config.log_level)

    async def main() -> None:
        components = await build(config)
        try:
            running = await start_server(components.spec, config, components.verifier)
            await serve_until_signalled(running, config)
        finally:
            await components.close()

    asyncio.run(main())
