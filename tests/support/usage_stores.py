"""The UsageStore adapters the shared contract suite runs over (tests/integration/
test_usage_store_contract.py): each factory is an async context manager yielding a fresh,
empty store, closed afterwards."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from leaky_tokens.analytics.adapters.memory_usage_store import InMemoryUsageStore
from leaky_tokens.analytics.adapters.sqlite_usage_store import open_sqlite_usage_store
from leaky_tokens.analytics.domain.ports import UsageStore

StoreFactory = Callable[[], AbstractAsyncContextManager[UsageStore]]


@contextlib.asynccontextmanager
async def sqlite_usage_store() -> AsyncIterator[UsageStore]:
    """The embedded store on a new SQLite file of its own."""
    with tempfile.TemporaryDirectory(prefix="usage-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'analytics.db'}"
        store = await open_sqlite_usage_store(url, raw_ttl_seconds=86_400)
        try:
            yield store
        finally:
            await store.close()


@contextlib.asynccontextmanager
async def memory_usage_store() -> AsyncIterator[UsageStore]:
    """The fast tests' store: everything in dictionaries."""
    store = InMemoryUsageStore()
    try:
        yield store
    finally:
        await store.close()


# name -> factory
USAGE_STORES: dict[str, StoreFactory] = {
    "memory": memory_usage_store,
    "sqlite": sqlite_usage_store,
}
