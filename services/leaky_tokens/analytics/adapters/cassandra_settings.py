"""Settings of the Cassandra usage store (ADR 0036), for the analytics service's settings."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from leaky_tokens.runtime.settings import SettingsError, doc

KEYSPACE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")


@dataclass(frozen=True)
class CassandraStoreSettings:
    """Where the Cassandra usage store connects and how it keeps raw events."""

    cassandra_hosts: tuple[str, ...] = field(
        default=("127.0.0.1",), metadata=doc("Cassandra contact points (host,host,...).")
    )
    cassandra_port: int = field(default=9042, metadata=doc("Cassandra native (CQL) port."))
    cassandra_keyspace: str = field(
        default="leaky_analytics",
        metadata=doc("Keyspace of the usage store; created at start if it does not exist."),
    )
    cassandra_replication_factor: int = field(
        default=1,
        metadata=doc("SimpleStrategy replication factor used when the keyspace is created."),
    )
    cassandra_raw_ttl_days: int = field(
        default=30,
        metadata=doc(
            "Days raw usage events are kept (CQL TTL). Also how long a re-delivered event id"
            " is recognised as a duplicate: keep it above the Kafka topic's retention."
        ),
    )
    cassandra_request_timeout_ms: int = field(
        default=5_000,
        metadata=doc("A Cassandra request not answered by then fails (the store is unavailable)."),
    )

    cassandra_batch_max_bytes: int = field(
        default=4_500,
        metadata=doc(
            "Estimated size up to which the projection's rows of several partitions share one"
            " unlogged batch. Keep it under the server's batch_size_warn_threshold (5 KiB by"
            " default; batch_size_fail_threshold, 50 KiB, refuses the batch): ADR 0055."
        ),
    )
    cassandra_batch_max_partitions: int = field(
        default=10,
        metadata=doc(
            "Most partitions one shared unlogged batch covers. Keep it at or under the server's"
            " unlogged_batch_across_partitions_warn_threshold (10 by default): ADR 0055."
        ),
    )

    def __post_init__(self) -> None:
        if not self.cassandra_hosts:
            raise SettingsError("cassandra_hosts: at least one host is needed")
        if not KEYSPACE_NAME.fullmatch(self.cassandra_keyspace):
            raise SettingsError(
                "cassandra_keyspace: letters, digits and _ only, starting with a letter,"
                f" at most 48 characters; got {self.cassandra_keyspace!r}"
            )
        for name in (
            "cassandra_port",
            "cassandra_replication_factor",
            "cassandra_raw_ttl_days",
            "cassandra_request_timeout_ms",
            "cassandra_batch_max_bytes",
            "cassandra_batch_max_partitions",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.cassandra_batch_max_bytes > 50 * 1024:
            raise SettingsError(
                "cassandra_batch_max_bytes: at most 51200 (the server's default"
                f" batch_size_fail_threshold refuses bigger batches); got"
                f" {self.cassandra_batch_max_bytes}"
            )
        # CQL's TTL limit is 20 years.
        if self.cassandra_raw_ttl_days > 7300:
            raise SettingsError("cassandra_raw_ttl_days: at most 7300 (CQL's 20-year TTL limit)")
