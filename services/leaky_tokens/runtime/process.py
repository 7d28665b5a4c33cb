"""Runs one service process: settings, logging, build, serve until signalled, clean up."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import uvloop

from leaky_tokens.runtime import logging as leaky_logging
from leaky_tokens.runtime import settings as settings_mod
from leaky_tokens.runtime.jwt_verifier import JwtVerifier
from leaky_tokens.runtime.server import (
    ServerSettings,
    ServiceSpec,
    serve_until_signalled,
    start_server,
)
from leaky_tokens.runtime.workers import is_worker, supervise


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
ONE_PROCESS = "it keeps state in the process"


def run_service(
    slug: str,
    settings_cls: type[S],
    env_prefix: str,
    build: Callable[[S], Awaitable[Components]],
    *,
    single_process_reason: Callable[[S], str] = lambda settings: ONE_PROCESS,
    name_of: Callable[[S], str] | None = None,
) -> None:
    """Load settings, configure logs, build the service and serve it until SIGTERM/SIGINT.

    With `processes` > 1 this process supervises that many workers sharing the port
    (runtime/workers.py), if the service allows it: `single_process_reason` says why these
    settings need one process, or "" when they can share (the default refuses: a service
    whose state lives in its process, e.g. an in-memory store, would split it).
    `name_of` names the process by its settings (logs' `service`, messages) where one module
    serves as more than one deployment; else it is `slug`.
    """
    try:
        config = settings_mod.load(settings_cls, env_prefix)
    except settings_mod.SettingsError as error:
        sys.exit(f"{slug}: bad setting: {error}")
    if name_of is not None:
        slug = name_of(config)
    leaky_logging.configure(slug, config.log_level)
    if config.processes < 1:
        sys.exit(f"{slug}: bad setting: {env_prefix}_PROCESSES must be at least 1")
    if config.processes > 1:
        reason = single_process_reason(config)
        if reason:
            sys.exit(f"{slug}: bad setting: {env_prefix}_PROCESSES must be 1: {reason}")
        sys.exit(supervise(slug, config, env_prefix))

    async def main() -> None:
        components = await build(config)
        try:
            running = await start_server(
                components.spec, config, components.verifier, reuse_port=is_worker()
            )
            await serve_until_signalled(running, config)
        finally:
            await components.close()

    # uvloop: about a quarter less CPU per gRPC call than asyncio's own loop (ADR 0027).
    uvloop.run(main())
