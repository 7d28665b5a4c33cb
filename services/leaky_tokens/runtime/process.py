"""Runs one service process: settings, logging, build, serve until signalled, clean up."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from leaky_tokens.runtime import logging as leaky_logging
from leaky_tokens.runtime import settings as settings_mod
from leaky_tokens.runtime.server import (
    ServerSettings,
    serve_until_signalled,
    start_server,
)

S = TypeVar("S", bound=ServerSettings)


def run_service(
    slug: str,
    settings_cls: type[S],
    env_prefix: str,
    build: Callable[[S], Awaitable[Any]],
) -> None:
    """Load settings, configure logs, build the service and serve it until SIGTERM/SIGINT."""
    config = settings_mod.load(settings_cls, env_prefix)
    leaky_logging.configure(slug, config.log_level)

    async def main() -> None:
        components = await build(config)
        running = await start_server(components.spec, config, components.verifier)
        try:
            await serve_until_signalled(running, config)
        finally:
            close = getattr(components, "close", None)
            if close is not None:
                await close()

    asyncio.run(main())
