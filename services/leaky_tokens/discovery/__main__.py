"""`python -m leaky_tokens.discovery`: serve Envoy the instances Consul knows."""

from __future__ import annotations

import asyncio
import sys

from leaky_tokens.discovery.bootstrap import ENV_PREFIX, DiscoverySettings, build, serve
from leaky_tokens.runtime import logging as leaky_logging
from leaky_tokens.runtime import settings as settings_mod


def main() -> None:
    """Entry point."""
    try:
        config = settings_mod.load(DiscoverySettings, ENV_PREFIX)
    except settings_mod.SettingsError as error:
        sys.exit(f"discovery: bad setting: {error}")
    leaky_logging.configure("discovery", config.log_level)

    async def run() -> None:
        # Built inside the loop: the catalog's asyncio.Event and the Consul client bind to it.
        await serve(build(config), config)

    asyncio.run(run())


if __name__ == "__main__":
    main()
