"""The usage-event relay alone, as a process: `python -m leaky_tokens.token.relay_process`.

The token service runs the same relay as a task (ADR 0024); this runs it without serving
gRPC, for operators who want relaying apart, and for the crash tests (SIGKILL mid-stream).
Settings are the token service's own (LEAKY_TOKEN_STORE_*, LEAKY_TOKEN_EVENTS_*).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from dataclasses import dataclass

from leaky_tokens.runtime.settings import SettingsError, load
from leaky_tokens.token.adapters.relay_factory import build_relay
from leaky_tokens.token.adapters.relay_settings import RelaySettings
from leaky_tokens.token.adapters.settings import TokenStoreSettings
from leaky_tokens.token.adapters.store_factory import redis_store

ENV_PREFIX = "LEAKY_TOKEN"


@dataclass(frozen=True)
class RelayProcessSettings(TokenStoreSettings, RelaySettings):
    """The store's and the relay's settings together."""

    def __post_init__(self) -> None:
        TokenStoreSettings.__post_init__(self)
        RelaySettings.__post_init__(self)


async def serve(settings: RelayProcessSettings) -> None:
    """Relay from the Redis store until SIGTERM or SIGINT."""
    store = redis_store(settings)
    relay = build_relay(settings, settings, store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    relay.start()
    print("relay: running", flush=True)  # readiness line for whoever started us
    await stop.wait()
    await relay.stop()
    await store.close()  # its connections, the relay's own RESP connection included


def main() -> int:
    """Entry point; a bad setting exits 2 with one line naming it."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    try:
        settings = load(RelayProcessSettings, ENV_PREFIX)
    except SettingsError as error:
        print(f"relay: {error}", file=sys.stderr)
        return 2
    if settings.store_backend == "memory":
        print(
            "relay: a separate relay needs a Redis store (LEAKY_TOKEN_STORE_BACKEND)",
            file=sys.stderr,
        )
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
