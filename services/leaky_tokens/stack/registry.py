"""The stack's components in start order, with ports from LEAKY_STACK_<NAME>_PORT."""

from __future__ import annotations

import os

from leaky_tokens.stack.component import Component
from leaky_tokens.stack.postgres import Postgres
from leaky_tokens.stack.redis import Redis


def _port(name: str, default: int) -> int:
    return int(os.environ.get(f"LEAKY_STACK_{name.upper()}_PORT", default))


def default_components() -> list[Component]:
    """Every component, in the order `up` starts them (`down` stops in reverse)."""
    return [
        Redis(_port("redis", 6379)),
        Postgres(_port("postgres", 5432)),
    ]
