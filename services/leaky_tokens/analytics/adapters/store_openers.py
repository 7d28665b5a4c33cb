"""The projection worker's stores, each built from its own LEAKY_ANALYTICS_* settings.

The worker (`projection_worker.STORES`) names these; the analytics service builds the same
stores from `AnalyticsSettings`, which includes both settings classes, so one set of
variables configures the service and the worker alike.
"""

from __future__ import annotations

from leaky_tokens.analytics.adapters.cassandra_settings import CassandraStoreSettings
from leaky_tokens.analytics.adapters.cassandra_usage_store import CassandraUsageStore
from leaky_tokens.analytics.adapters.log_tailer import EmbeddedProjectionSettings
from leaky_tokens.analytics.adapters.sqlite_usage_store import open_sqlite_usage_store
from leaky_tokens.analytics.domain.ports import UsageStore
from leaky_tokens.runtime.settings import load

PREFIX = "LEAKY_ANALYTICS"


async def open_cassandra() -> UsageStore:
    """Cassandra as LEAKY_ANALYTICS_CASSANDRA_* say (connects on first use)."""
    return CassandraUsageStore(load(CassandraStoreSettings, PREFIX))


async def open_sqlite() -> UsageStore:
    """The SQLite store as LEAKY_ANALYTICS_EMBEDDED_DATABASE_URL says (migrated first)."""
    settings = load(EmbeddedProjectionSettings, PREFIX)
    return await open_sqlite_usage_store(
        settings.database_url(), raw_ttl_seconds=settings.raw_ttl_seconds
    )
