"""The Cassandra usage store on the stack's node, one fresh keyspace per use (dropped after)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import RoundRobinPolicy

from leaky_tokens.analytics.adapters.cassandra_settings import CassandraStoreSettings
from leaky_tokens.analytics.adapters.cassandra_usage_store import CassandraUsageStore
from leaky_tokens.stack.orchestrator import Stack
from tests.support.stack import component


def cassandra_port(stack: Stack) -> int:
    """The CQL port of the stack's Cassandra."""
    port: int = component(stack, "cassandra").port  # type: ignore[attr-defined]
    return port


def store_settings(port: int, keyspace: str, **overrides: Any) -> CassandraStoreSettings:
    """Settings for a store on 127.0.0.1:`port` in `keyspace`."""
    # A loaded 2-core machine: schema changes may take seconds.
    settings: dict[str, Any] = {"cassandra_request_timeout_ms": 30_000, **overrides}
    return CassandraStoreSettings(
        cassandra_hosts=("127.0.0.1",), cassandra_port=port, cassandra_keyspace=keyspace, **settings
    )


def new_keyspace() -> str:
    """A keyspace name nobody else uses (tests sharing one node never collide)."""
    return f"leaky_test_{uuid.uuid4().hex[:16]}"


def _cluster(port: int) -> Cluster:
    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy())
    return Cluster(
        ["127.0.0.1"],
        port=port,
        protocol_version=5,
        connect_timeout=10,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )


def drop_keyspace(port: int, keyspace: str) -> None:
    """Drop a test keyspace (blocking)."""
    cluster = _cluster(port)
    try:
        cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
    finally:
        cluster.shutdown()


def raw_event_ids(
    port: int, keyspace: str, *, polls: int = 1, until: set[str] | None = None
) -> list[str]:
    """The event ids of every row of the raw table's ALL scope (where the store keeps each
    usage fact once, give-backs included, and looks ids up), read with CQL past the store's
    code (blocking). With `until`, read up to `polls` times, 0.2 s apart, until every id of
    it is there (one connection for all the reads)."""
    cluster = _cluster(port)
    try:
        session = cluster.connect()
        for attempt in range(polls):
            rows = session.execute(
                f"SELECT scope_kind, event_id FROM {keyspace}.usage_raw", timeout=60
            )
            found = [row.event_id for row in rows if row.scope_kind == "all"]
            if until is None or until <= set(found) or attempt == polls - 1:
                return found
            time.sleep(0.2)
        return []
    finally:
        cluster.shutdown()


@asynccontextmanager
async def cassandra_store(port: int, **overrides: Any) -> AsyncIterator[CassandraUsageStore]:
    """A started store in a fresh keyspace; closed and its keyspace dropped afterwards.

    The contract suite's async factory: `async with cassandra_store(port) as store: ...`.
    """
    keyspace = new_keyspace()
    store = CassandraUsageStore(store_settings(port, keyspace, **overrides))
    try:
        await store.start()
        yield store
    finally:
        await store.close()
        await asyncio.to_thread(drop_keyspace, port, keyspace)
