"""The usage store on Apache Cassandra: exact, idempotent rollups under at-least-once delivery.

ADR 0036 explains the design; in short:

* Rollup cells are keyed by (scope, provider, resolution, bucket) *and* the source (topic,
  partition) the facts came from. Kafka gives one partition to one consumer at a time, so
  each cell has one writer, which keeps it in memory while it owns the partition and writes
  absolute values plus the highest offset applied. A fact counts in a cell only if its offset
  is above the cell's applied offset: a replay from an older offset changes nothing, and no
  counter (not idempotent) or per-event LWT (too slow) is needed.
* The same event id relayed twice reaches the same partition (the relay keys messages by the
  event's partition key) at another offset. The raw table's primary key holds the event id,
  so before aggregating, a batch's ids are looked up in raw and those found are dropped. Cells
  are written before raw rows: a raw row exists only once every cell it counts in is written,
  so "in raw" implies "counted", and a crash between the two leaves cells whose applied
  offsets make the replay skip the facts while it writes their raw rows.
* Ownership is checked per call in a small `sources` table: a store instance that finds
  another writer's id there (a rebalance, a restart) claims the partition and drops its cache.
  The table also holds the latest event time applied from the partition, written before the
  cells, so a bucket after it is known to be empty and is not read.
* `latest()` of a user or an org reads `recent` chunks: per batch, source partition, scope
  and day one row holding that scope's decisions of the batch (ADR 0045), instead of a raw row
  per decision and scope; the ALL scope's raw rows (one per fact) stay, for `latest()` and
  the event-id look-up.
* Queries read a bucket's cells of every partition in one partition read and sum them; a
  cell of the ALL or ORG scope packs its users' shares into one blob.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import hashlib
import heapq
import json
import struct
import sys
import threading
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cassandra import ConsistencyLevel, OperationTimedOut, RequestExecutionException
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    ResponseFuture,
    Session,
)
from cassandra.connection import ConnectionException
from cassandra.policies import ConstantReconnectionPolicy, RoundRobinPolicy
from cassandra.query import BatchStatement, BatchType, PreparedStatement, tuple_factory

from leaky_tokens.analytics.adapters.cassandra_binding import RowBinder
from leaky_tokens.analytics.adapters.cassandra_settings import CassandraStoreSettings
from leaky_tokens.analytics.domain.facts import (
    FactKind,
    PurchaseFact,
    PurchaseState,
    SourcedFact,
    UsageFact,
)
from leaky_tokens.analytics.domain.ports import (
    PurchaseTotals,
    PurchaseView,
    Scope,
    ScopeKind,
    UsageStoreUnavailableError,
    scopes_of,
)
from leaky_tokens.analytics.domain.totals import Totals, UserShare
from leaky_tokens.analytics.domain.windows import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    RESOLUTIONS,
    Resolution,
)

try:  # the wheel's compiled libev reactor; asyncore (the driver's default) is gone in 3.12
    from cassandra.io.libevreactor import LibevConnection as _Connection
except ImportError:  # pragma: no cover - a build without the C extension
    from cassandra.io.asyncioreactor import AsyncioConnection as _Connection

T = TypeVar("T")

# How many minute/hour/day buckets one rollup partition holds (bounded partitions).
PERIOD_MS = {MINUTE_MS: DAY_MS, HOUR_MS: 30 * DAY_MS, DAY_MS: 360 * DAY_MS}
# How far behind the newest bucket a cell stays cached (late events within a partition).
KEEP_MS = {MINUTE_MS: 15 * MINUTE_MS, HOUR_MS: 3 * HOUR_MS, DAY_MS: 3 * DAY_MS}
DECISIONS = frozenset(kind for kind in FactKind if kind.is_decision)
IN_CHUNK = 100  # ids per existence lookup
MAX_IN_FLIGHT = 128  # concurrent requests per call
OWN_BATCH_ROWS = 8  # a partition with this many rows in one write gets its own batches
PARTITION_BATCH_ROWS = 500  # rows of one partition per batch (one mutation)
# How many leading bind parameters of each write statement make its partition key.
PARTITION_KEY = {
    "raw_insert": 4,
    "recent_insert": 4,
    "day_insert": 3,
    "cell_write": 5,
    "source_claim": 3,
    "source_max": 3,
    "provider_insert": 2,
    "purchase_put": 2,
}
NONE = -(2**63)

# Driver errors that mean "Cassandra is not reachable or not answering now" (not a bad query:
# InvalidRequest and the like stay errors).
_OUTAGE: tuple[type[BaseException], ...] = (
    NoHostAvailable,
    OperationTimedOut,
    RequestExecutionException,  # Unavailable, read/write timeouts and failures, overloaded
    ConnectionException,
    OSError,
    TimeoutError,
)


def _schema(keyspace: str, replication_factor: int) -> list[str]:
    k = keyspace
    return [
        f"CREATE KEYSPACE IF NOT EXISTS {k} WITH replication ="
        f" {{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}",
        # Raw decisions per scope; the ALL scope also keeps give-backs (decision = false) and
        # is where event ids are looked up.
        f"""CREATE TABLE IF NOT EXISTS {k}.usage_raw (
            scope_kind text, scope_id text, provider text, day bigint,
            occurred_at bigint, event_id text,
            kind text, decision boolean, user_id text, org_id text, tokens bigint,
            allowed boolean,
            PRIMARY KEY ((scope_kind, scope_id, provider, day), occurred_at, event_id)
        ) WITH CLUSTERING ORDER BY (occurred_at DESC, event_id DESC)""",
        # A user's or org's decisions, one row per projected batch, source partition and day
        # (ADR 0045): `latest()` of those scopes reads the rows newest first. Replaces the
        # USER/ORG copies in usage_raw (still read for rows written before it).
        f"""CREATE TABLE IF NOT EXISTS {k}.usage_recent (
            scope_kind text, scope_id text, provider text, day bigint,
            newest bigint, chunk bigint, facts blob,
            PRIMARY KEY ((scope_kind, scope_id, provider, day), newest, chunk)
        ) WITH CLUSTERING ORDER BY (newest DESC, chunk ASC)""",
        f"""CREATE TABLE IF NOT EXISTS {k}.usage_raw_days (
            scope_kind text, scope_id text, provider text, day bigint,
            PRIMARY KEY ((scope_kind, scope_id, provider), day)
        ) WITH CLUSTERING ORDER BY (day DESC)""",
        f"""CREATE TABLE IF NOT EXISTS {k}.usage_rollup (
            scope_kind text, scope_id text, provider text, resolution text, period bigint,
            bucket bigint, topic text, source_partition int,
            applied_offset bigint, events bigint, allowed_events bigint, tokens bigint,
            allowed_tokens bigint, refunded_tokens bigint, shares blob,
            PRIMARY KEY ((scope_kind, scope_id, provider, resolution, period),
                         bucket, topic, source_partition)
        )""",
        f"""CREATE TABLE IF NOT EXISTS {k}.usage_sources (
            topic text, source_partition int, writer text, max_occurred bigint,
            PRIMARY KEY ((topic, source_partition))
        )""",
        f"""CREATE TABLE IF NOT EXISTS {k}.usage_providers (
            scope_kind text, scope_id text, provider text,
            PRIMARY KEY ((scope_kind, scope_id), provider)
        )""",
        f"""CREATE TABLE IF NOT EXISTS {k}.purchases (
            scope_kind text, scope_id text, saga_id text,
            user_id text, org_id text, provider text, tokens bigint, state text, reason text,
            created_at bigint, updated_at bigint, event_id text,
            PRIMARY KEY ((scope_kind, scope_id), saga_id)
        )""",
    ]


_STATEMENTS = {
    "raw_insert": "INSERT INTO {k}.usage_raw (scope_kind, scope_id, provider, day, occurred_at,"
    " event_id, kind, decision, user_id, org_id, tokens, allowed)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?",
    "raw_exists": "SELECT event_id FROM {k}.usage_raw WHERE scope_kind = 'all' AND scope_id = ''"
    " AND provider = ? AND day = ? AND (occurred_at, event_id) IN ?",
    "raw_latest": "SELECT event_id, occurred_at, kind, provider, user_id, org_id, tokens, allowed"
    " FROM {k}.usage_raw WHERE scope_kind = ? AND scope_id = ? AND provider = ? AND day = ?"
    " AND decision = true LIMIT ? ALLOW FILTERING",
    "recent_insert": "INSERT INTO {k}.usage_recent (scope_kind, scope_id, provider, day, newest,"
    " chunk, facts) VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?",
    "recent_latest": "SELECT newest, facts FROM {k}.usage_recent WHERE scope_kind = ?"
    " AND scope_id = ? AND provider = ? AND day = ?",
    "day_insert": "INSERT INTO {k}.usage_raw_days (scope_kind, scope_id, provider, day)"
    " VALUES (?, ?, ?, ?) USING TTL ?",
    "days": "SELECT day FROM {k}.usage_raw_days WHERE scope_kind = ? AND scope_id = ?"
    " AND provider = ?",
    "cell_write": "INSERT INTO {k}.usage_rollup (scope_kind, scope_id, provider, resolution,"
    " period, bucket, topic, source_partition, applied_offset, events, allowed_events, tokens,"
    " allowed_tokens, refunded_tokens, shares)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "cells_own": "SELECT bucket, applied_offset, events, allowed_events, tokens, allowed_tokens,"
    " refunded_tokens, shares FROM {k}.usage_rollup WHERE scope_kind = ? AND scope_id = ?"
    " AND provider = ? AND resolution = ? AND period = ? AND bucket IN ? AND topic = ?"
    " AND source_partition = ?",
    "cells_read": "SELECT bucket, events, allowed_events, tokens, allowed_tokens,"
    " refunded_tokens, shares FROM {k}.usage_rollup WHERE scope_kind = ? AND scope_id = ?"
    " AND provider = ? AND resolution = ? AND period = ? AND bucket IN ?",
    "source_read": "SELECT writer, max_occurred FROM {k}.usage_sources"
    " WHERE topic = ? AND source_partition = ?",
    "source_claim": "UPDATE {k}.usage_sources SET writer = ?"
    " WHERE topic = ? AND source_partition = ?",
    "source_max": "UPDATE {k}.usage_sources SET max_occurred = ?"
    " WHERE topic = ? AND source_partition = ?",
    "provider_insert": "INSERT INTO {k}.usage_providers (scope_kind, scope_id, provider)"
    " VALUES (?, ?, ?)",
    "providers": "SELECT provider FROM {k}.usage_providers WHERE scope_kind = ? AND scope_id = ?",
    "purchase_get": "SELECT saga_id, user_id, org_id, provider, tokens, state, reason, created_at,"
    " updated_at, event_id FROM {k}.purchases WHERE scope_kind = 'all' AND scope_id = ''"
    " AND saga_id IN ?",
    "purchase_put": "INSERT INTO {k}.purchases (scope_kind, scope_id, saga_id, user_id, org_id,"
    " provider, tokens, state, reason, created_at, updated_at, event_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "purchases": "SELECT saga_id, user_id, org_id, provider, tokens, state, reason, created_at,"
    " updated_at, event_id FROM {k}.purchases WHERE scope_kind = ? AND scope_id = ?",
}


# --- user shares packed in one blob --------------------------------------------------------

_HEADER = struct.Struct("<BI")


def encode_shares(shares: Mapping[str, list[int]]) -> bytes:
    """Pack {user: [tokens, events]}: version 1 is counts as int64s then NUL-joined ids."""
    ids = list(shares)
    if any("\0" in user for user in ids):
        return b"\x02" + json.dumps(shares, separators=(",", ":")).encode()
    counts = array.array("q", [c for user in ids for c in shares[user]])
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        counts.byteswap()
    return _HEADER.pack(1, len(ids)) + counts.tobytes() + "\0".join(ids).encode()


def _int64_pairs(blob: bytes) -> tuple[int, array.array[int], int]:
    """A version-1 blob's count n, its 2n int64s and where the bytes after them start."""
    _, n = _HEADER.unpack_from(blob)
    end = _HEADER.size + 16 * n
    numbers = array.array("q")
    numbers.frombytes(blob[_HEADER.size : end])
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        numbers.byteswap()
    return n, numbers, end


def decode_shares(blob: bytes) -> dict[str, list[int]]:
    """The inverse of `encode_shares`."""
    if not blob:
        return {}
    if blob[0] == 2:
        loaded: dict[str, list[int]] = json.loads(blob[1:])
        return loaded
    n, counts, end = _int64_pairs(blob)
    ids = blob[end:].decode().split("\0") if n else []
    pairs = counts.tolist()
    return {user: pairs[2 * i : 2 * i + 2] for i, user in enumerate(ids)}


def _shares_into(totals: Totals, blob: bytes | None) -> None:
    """Add a blob's user shares to `totals.users` without decoding into lists first."""
    if not blob:
        return
    users = totals.users
    if blob[0] == 2:
        items: Iterable[tuple[str, list[int]]] = decode_shares(blob).items()
        for user, (tokens, events) in items:
            _add_share(users, user, tokens, events)
        return
    n, counts, end = _int64_pairs(blob)
    ids = blob[end:].decode().split("\0") if n else []
    tokens_of = counts[0::2]
    events_of = counts[1::2]
    if not users:
        users.update(zip(ids, map(UserShare, tokens_of, events_of), strict=True))
        return
    for user, tokens, events in zip(ids, tokens_of, events_of, strict=True):
        _add_share(users, user, tokens, events)


def _add_share(users: dict[str, UserShare], user: str, tokens: int, events: int) -> None:
    share = users.get(user)
    if share is None:
        users[user] = UserShare(tokens, events)
    else:
        share.tokens += tokens
        share.events += events


# --- a scope's decisions of one batch packed in one blob (usage_recent) --------------------

_KINDS = tuple(FactKind)
_KIND_INDEX = {kind: i for i, kind in enumerate(_KINDS)}


def encode_recent(facts: Sequence[UsageFact]) -> bytes:
    """Pack decisions of one provider: version 1 is (occurred_at, tokens) int64 pairs, then a
    byte per fact (kind index * 2 + allowed), then NUL-joined (event id, user, org) strings;
    version 2 (JSON) when a string holds a NUL."""
    strings = [s for f in facts for s in (f.event_id, f.user_id, f.org_id)]
    if any("\0" in s for s in strings):
        rows = [
            [f.event_id, f.occurred_at_ms, f.kind.value, f.user_id, f.org_id, f.tokens, f.allowed]
            for f in facts
        ]
        return b"\x02" + json.dumps(rows, separators=(",", ":")).encode()
    numbers = array.array("q", [n for f in facts for n in (f.occurred_at_ms, f.tokens)])
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        numbers.byteswap()
    flags = bytes(_KIND_INDEX[f.kind] * 2 + f.allowed for f in facts)
    return _HEADER.pack(1, len(facts)) + numbers.tobytes() + flags + "\0".join(strings).encode()


def decode_recent(blob: bytes, provider: str) -> list[UsageFact]:
    """The inverse of `encode_recent` (the provider is the row's)."""
    if not blob:
        return []
    if blob[0] == 2:
        return [
            UsageFact(e, at, FactKind(k), provider, u, o, tokens, allowed)
            for e, at, k, u, o, tokens, allowed in json.loads(blob[1:])
        ]
    n, numbers, end = _int64_pairs(blob)
    flags = blob[end : end + n]
    strings = blob[end + n :].decode().split("\0") if n else []
    return [
        UsageFact(
            strings[3 * i],
            numbers[2 * i],
            _KINDS[flags[i] >> 1],
            provider,
            strings[3 * i + 1],
            strings[3 * i + 2],
            numbers[2 * i + 1],
            bool(flags[i] & 1),
        )
        for i in range(n)
    ]


# --- rollup cells ---------------------------------------------------------------------------

# (scope kind value, scope id, provider, resolution length in ms, bucket start): plain str and
# int, hashed many times per fact (an enum's hash runs Python code).
CellKey = tuple[str, str, str, int, int]
RES_NAME = {r.value: r.name for r in RESOLUTIONS}


@dataclass(slots=True)
class _Cell:
    """One source partition's rollup of one bucket, as written (absolute values)."""

    applied_offset: int = NONE
    events: int = 0
    allowed_events: int = 0
    tokens: int = 0
    allowed_tokens: int = 0
    refunded_tokens: int = 0
    shares: dict[str, list[int]] | None = None  # ALL and ORG scopes; USER cells are one user

    def add(self, fact: UsageFact, decision: bool) -> None:
        """Count one fact in (`decision`: its kind's is_decision, computed once per fact)."""
        if not decision:
            self.refunded_tokens += fact.tokens
            return
        self.events += 1
        self.tokens += fact.tokens
        if fact.allowed:
            self.allowed_events += 1
            self.allowed_tokens += fact.tokens
        if self.shares is not None:
            share = self.shares.get(fact.user_id)
            if share is None:
                self.shares[fact.user_id] = [fact.tokens, 1]
            else:
                share[0] += fact.tokens
                share[1] += 1

    def merge(self, other: _Cell) -> None:
        """Count in everything `other` counted (the same as adding its facts one by one)."""
        self.events += other.events
        self.allowed_events += other.allowed_events
        self.tokens += other.tokens
        self.allowed_tokens += other.allowed_tokens
        self.refunded_tokens += other.refunded_tokens
        if self.shares is not None and other.shares:
            shares = self.shares
            for user, (tokens, events) in other.shares.items():
                share = shares.get(user)
                if share is None:
                    shares[user] = [tokens, events]
                else:
                    share[0] += tokens
                    share[1] += events


@dataclass(slots=True)
class _Minute:
    """A call's fresh facts of one (scope, provider, minute), summed once for the minute, hour
    and day cells they count in. `low` is their lowest offset: a cell whose applied offset is
    below it takes the sum whole; the others (a replay over a partly written call) take the
    facts one by one, each only if its offset is above the cell's."""

    sum: _Cell
    low: int
    facts: list[tuple[int, UsageFact, bool]] = field(default_factory=list)


@dataclass
class _Source:
    """What this store instance knows about one (topic, partition) it writes."""

    claimed: bool = False
    cells: dict[CellKey, _Cell] = field(default_factory=dict)
    # Buckets above the floor (per resolution) that are not cached hold nothing of this
    # partition: no earlier writer applied an event that late, and we never evicted them.
    floor: dict[int, int] = field(default_factory=dict)  # by resolution length
    max_occurred: int = NONE
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _period(resolution_ms: int, bucket: int) -> int:
    return bucket - bucket % PERIOD_MS[resolution_ms]


def _day(t_ms: int) -> int:
    return t_ms - t_ms % DAY_MS


# --- the store ------------------------------------------------------------------------------


class CassandraUsageStore:
    """UsageStore over Cassandra 5 (cassandra-driver, libev reactor, asyncio futures)."""

    def __init__(self, settings: CassandraStoreSettings, *, writer_id: str | None = None) -> None:
        self._settings = settings
        self._keyspace = settings.cassandra_keyspace
        self._ttl = settings.cassandra_raw_ttl_days * 86_400
        self._timeout = settings.cassandra_request_timeout_ms / 1000
        # Shared unlogged batches stay under the server's warnings (estimated sizes).
        self._batch_bytes = settings.cassandra_batch_max_bytes
        self._batch_partitions = settings.cassandra_batch_max_partitions
        # A fresh id per instance: a restarted process is a new writer and re-reads its cells.
        self.writer_id = writer_id or uuid.uuid4().hex
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._prepared: dict[str, PreparedStatement] = {}
        self._binders: dict[str, RowBinder] = {}  # the write statements' (PARTITION_KEY)
        self._connecting = asyncio.Lock()
        self._sources: dict[tuple[str, int], _Source] = {}
        self._known_providers: set[tuple[ScopeKind, str, str]] = set()
        self._known_days: set[tuple[ScopeKind, str, str, int]] = set()

    # --- connection ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, create the keyspace and tables if missing and prepare the statements."""
        await self._ready()

    async def _ready(self) -> Session:
        if self._session is not None:
            return self._session
        async with self._connecting:
            if self._session is None:
                try:
                    await asyncio.to_thread(self._connect)
                except _OUTAGE as error:
                    raise self._unavailable(error) from error
            assert self._session is not None
            return self._session

    def _connect(self) -> None:
        """Blocking: connect, create the schema, prepare (run in a thread)."""
        s = self._settings
        profile = ExecutionProfile(
            load_balancing_policy=RoundRobinPolicy(),
            request_timeout=self._timeout,
            consistency_level=ConsistencyLevel.LOCAL_QUORUM,
            row_factory=tuple_factory,
        )
        cluster = Cluster(
            list(s.cassandra_hosts),
            port=s.cassandra_port,
            protocol_version=5,
            connection_class=_Connection,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=min(self._timeout, 5.0),
            control_connection_timeout=min(self._timeout, 5.0),
            reconnection_policy=ConstantReconnectionPolicy(1.0, max_attempts=None),
            schema_metadata_enabled=False,
            token_metadata_enabled=False,
        )
        try:
            session = cluster.connect()
            for cql in _schema(self._keyspace, s.cassandra_replication_factor):
                session.execute(cql, timeout=max(self._timeout, 30.0))
            prepared = {
                name: session.prepare(text.format(k=self._keyspace))
                for name, text in _STATEMENTS.items()
            }
        except BaseException:
            cluster.shutdown()
            raise
        version = cluster.protocol_version
        self._binders = {name: RowBinder(prepared[name], version) for name in PARTITION_KEY}
        self._cluster, self._session, self._prepared = cluster, session, prepared

    def _unavailable(self, error: BaseException) -> UsageStoreUnavailableError:
        hosts = ",".join(self._settings.cassandra_hosts)
        return UsageStoreUnavailableError(
            f"cassandra {hosts}:{self._settings.cassandra_port}: {type(error).__name__}: {error}"
        )

    async def close(self) -> None:
        cluster, self._cluster, self._session = self._cluster, None, None
        if cluster is not None:
            await asyncio.to_thread(cluster.shutdown)

    async def _execute(self, name: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run one prepared statement; every page of its rows."""
        session = await self._ready()
        statement = self._prepared[name]
        try:
            future = session.execute_async(statement, params)
            rows: list[tuple[Any, ...]] = []
            while True:
                page = await _wrap(future)
                if page:
                    rows.extend(page)
                if not future.has_more_pages:
                    return rows
                future.clear_callbacks()
                future.start_fetching_next_page()
        except _OUTAGE as error:
            raise self._unavailable(error) from error

    async def _write_all(self, writes: list[tuple[str, tuple[Any, ...], int]]) -> None:
        """Run (statement, params, size estimate) writes in unlogged batches.

        A partition with many rows gets batches of its own: Cassandra applies each as one
        mutation and does not size-check it. The other partitions' rows share batches of at
        most cassandra_batch_max_partitions partitions and about cassandra_batch_max_bytes
        (below the server's warnings); big rows go alone.
        """
        if not writes:
            return
        session = await self._ready()
        binders = self._binders
        max_bytes, max_partitions = self._batch_bytes, self._batch_partitions
        groups: dict[tuple[Any, ...], list[tuple[str, tuple[Any, ...], int]]] = {}
        for write in writes:
            name, params, _ = write
            groups.setdefault((name, *params[: PARTITION_KEY[name]]), []).append(write)
        requests: list[Any] = []
        shared: BatchStatement | None = None
        shared_bytes = 0
        partitions: set[tuple[Any, ...]] = set()
        for key, group in groups.items():
            if len(group) >= OWN_BATCH_ROWS:
                for i in range(0, len(group), PARTITION_BATCH_ROWS):
                    batch = BatchStatement(BatchType.UNLOGGED)
                    for name, params, _ in group[i : i + PARTITION_BATCH_ROWS]:
                        binders[name].add_to(batch, params)
                    requests.append(batch)
                continue
            for name, params, size in group:
                if size >= max_bytes:
                    requests.append(self._prepared[name].bind(params))
                    continue
                if (
                    shared is None
                    or shared_bytes + size > max_bytes
                    or (key not in partitions and len(partitions) >= max_partitions)
                ):
                    shared = BatchStatement(BatchType.UNLOGGED)
                    requests.append(shared)
                    shared_bytes = 0
                    partitions = set()
                binders[name].add_to(shared, params)
                shared_bytes += size
                partitions.add(key)
        await self._run_all(session, requests)

    async def _run_all(self, session: Session, requests: list[Any]) -> None:
        """Run every request, at most MAX_IN_FLIGHT at once; raise the first error once all
        have finished. The driver's callbacks submit the next request (as its own
        `execute_concurrent` does) and only the last one wakes this loop: no task, future or
        loop wake-up per request.

        One deadline for the phase instead of the driver's timer per request (ADR 0051: a
        libev timer made and cancelled per request): the request timeout per wave of
        MAX_IN_FLIGHT requests. When it passes, nothing more is submitted and the phase
        fails as an outage (the caller retries the batch; what was written stays valid)."""
        if not requests:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        lock = threading.Lock()
        queue = iter(requests)
        left = [len(requests)]
        wanted = [0]  # submissions owed (one per finished request while any is queued)
        stopped = [False]  # the caller was cancelled: submit nothing more
        errors: list[BaseException] = []
        here = threading.local()  # a callback run inside our own submit: the loop goes on

        def settle() -> None:
            if not done.done():
                if errors:
                    done.set_exception(errors[0])
                else:
                    done.set_result(None)

        def finished(error: BaseException | None) -> None:
            with lock:
                if error is not None:
                    errors.append(error)
                left[0] -= 1
                last = left[0] == 0
            if last:
                loop.call_soon_threadsafe(settle)
            else:
                submit(1)

        def submit(count: int) -> None:
            with lock:
                wanted[0] += count
            if getattr(here, "submitting", False):
                return  # the loop below, further up this thread's stack, submits it
            here.submitting = True
            try:
                while True:
                    with lock:
                        if not wanted[0]:
                            return
                        wanted[0] -= 1
                        request = None if stopped[0] else next(queue, None)
                    if request is None:
                        continue
                    try:
                        future = session.execute_async(request, timeout=None)
                    except Exception as error:  # reported like a failed request
                        finished(error)
                        continue
                    future.add_callbacks(lambda _: finished(None), finished)
            finally:
                here.submitting = False

        submit(min(MAX_IN_FLIGHT, len(requests)))
        waves = -(-len(requests) // MAX_IN_FLIGHT)
        try:
            await asyncio.wait_for(done, self._timeout * waves)
        except (asyncio.CancelledError, TimeoutError) as error:
            with lock:
                stopped[0] = True  # what is in flight lands; nothing new goes out
            if isinstance(error, asyncio.CancelledError):
                raise
            late = OperationTimedOut(
                errors=f"{len(requests)} requests not done in {self._timeout * waves:g} s"
            )
            raise self._unavailable(late) from error
        except _OUTAGE as error:
            raise self._unavailable(error) from error

    # --- projection ---------------------------------------------------------------------

    async def project(self, facts: Sequence[SourcedFact]) -> None:
        by_source: dict[tuple[str, int], list[tuple[int, UsageFact]]] = {}
        purchases: list[PurchaseFact] = []
        for sourced in facts:
            fact = sourced.fact
            if isinstance(fact, UsageFact):
                by_source.setdefault((sourced.topic, sourced.partition), []).append(
                    (sourced.offset, fact)
                )
            else:
                purchases.append(fact)
        await self._ready()
        await _gather(self._project_source(key, items) for key, items in by_source.items())
        if purchases:
            await self._project_purchases(purchases)

    async def _project_source(
        self, key: tuple[str, int], items: list[tuple[int, UsageFact]]
    ) -> None:
        source = self._sources.setdefault(key, _Source())
        async with source.lock:
            try:
                await self._apply(key, source, items)
            except BaseException:
                # Part may be written: forget the cache, so the retry reads what is there.
                source.claimed = False
                raise

    async def _apply(
        self, key: tuple[str, int], source: _Source, items: list[tuple[int, UsageFact]]
    ) -> None:
        topic, partition = key
        await self._claim(key, source)
        # The first of each event id only; then those already in raw (counted before).
        unique: dict[str, tuple[int, UsageFact]] = {}
        for offset, fact in items:
            unique.setdefault(fact.event_id, (offset, fact))
        # Only a fact no later than the partition's max_occurred can be in raw: a copy of an
        # event comes through the partition of the first (the relay keys both alike), and
        # max_occurred covers every fact ever counted from it (written before the cells).
        known = source.max_occurred
        lookup = self._in_raw([f for _, f in unique.values() if f.occurred_at_ms <= known])
        # Before any cell: whoever reads this knows no later bucket holds our writes. Taken
        # over every fact of the call, not only the fresh ones, so that it goes out with the
        # look-up (one round trip less): a fact found in raw was applied, so its time is at
        # or below the max_occurred already stored, and the value written is the same.
        newest = max(fact.occurred_at_ms for _, fact in unique.values())
        if newest > source.max_occurred:
            seen, _ = await _gather(
                [lookup, self._execute("source_max", (newest, topic, partition))]
            )
            source.max_occurred = newest
        else:
            seen = await lookup
        fresh = [(o, f) for o, f in unique.values() if f.event_id not in seen]
        if not fresh:
            return
        last_offset = max(offset for offset, _ in items)
        minutes = _minutes(fresh)
        # The cells the facts count in, as they are now (cache, Cassandra, or empty).
        targets = [(_cells_of(minute_key), minute) for minute_key, minute in minutes.items()]
        keys: dict[CellKey, None] = {}
        for cell_keys, _ in targets:
            keys.update(dict.fromkeys(cell_keys))
        # Updated in place, cached ones too: if a write below fails, _project_source marks
        # the source unclaimed, so the next call drops the whole cache and reads it again.
        updated = await self._load_cells(key, source, list(keys))
        for cell_keys, minute in targets:
            for cell_key in cell_keys:
                cell = updated[cell_key]
                # applied_offset is raised only after this loop: it is the cell's as loaded.
                if minute.low > cell.applied_offset:
                    cell.merge(minute.sum)
                    continue
                for offset, fact, decision in minute.facts:
                    if offset > cell.applied_offset:
                        cell.add(fact, decision)
        for cell in updated.values():
            cell.applied_offset = max(cell.applied_offset, last_offset)
        # The cells, the index and the user/org chunks in one phase (none needs another
        # first), then the ALL-scope raw rows (the ones looked up) last: a looked-up row
        # implies everything else is written (ADR 0036). Chunks or an index written before
        # their cells (a crash in between) show an event in `latest()` before Report counts
        # it, until the replay writes the cells.
        facts = [fact for _, fact in fresh]
        providers, days, index = self._index_writes(facts)
        cells = [
            self._cell_write(cell_key, cell, topic, partition) for cell_key, cell in updated.items()
        ]
        await self._write_all(cells + index + self._recent_writes(facts))
        self._known_providers.update(providers)
        self._known_days.update(days)
        await self._write_all(self._raw_writes(facts))
        source.cells.update(updated)
        self._evict(source)

    async def _claim(self, key: tuple[str, int], source: _Source) -> None:
        """Take the partition over unless the sources table says we still hold it."""
        topic, partition = key
        rows = await self._execute("source_read", (topic, partition))
        writer, max_occurred = rows[0] if rows else (None, None)
        if source.claimed and writer == self.writer_id:
            return
        source.claimed = False
        source.cells.clear()
        await self._execute("source_claim", (self.writer_id, topic, partition))
        known = NONE if max_occurred is None else max_occurred
        source.max_occurred = known
        source.floor = dict.fromkeys(RES_NAME, known)
        source.claimed = True

    async def _in_raw(self, facts: list[UsageFact]) -> set[str]:
        """The event ids among `facts` already in the raw table."""
        if not facts:
            return set()
        groups: dict[tuple[str, int], list[UsageFact]] = {}
        for fact in facts:
            groups.setdefault((fact.provider, _day(fact.occurred_at_ms)), []).append(fact)
        lookups = []
        for (provider, day), group in groups.items():
            for i in range(0, len(group), IN_CHUNK):
                pairs = [(f.occurred_at_ms, f.event_id) for f in group[i : i + IN_CHUNK]]
                lookups.append(self._execute("raw_exists", (provider, day, pairs)))
        found: set[str] = set()
        for rows in await _gather(lookups):
            found.update(row[0] for row in rows)
        return found

    async def _load_cells(
        self, key: tuple[str, int], source: _Source, keys: list[CellKey]
    ) -> dict[CellKey, _Cell]:
        topic, partition = key
        cells: dict[CellKey, _Cell] = {}
        wanted: dict[tuple[str, str, str, int, int], list[int]] = {}
        for cell_key in keys:
            cached = source.cells.get(cell_key)
            if cached is not None:
                cells[cell_key] = cached
                continue
            kind, scope_id, provider, resolution, bucket = cell_key
            cells[cell_key] = _Cell(shares=None if kind == "user" else {})
            if bucket <= source.floor[resolution]:
                part = (kind, scope_id, provider, resolution, _period(resolution, bucket))
                wanted.setdefault(part, []).append(bucket)
        parts = list(wanted.items())
        reads = [
            self._execute(
                "cells_own",
                (kind, scope_id, provider, RES_NAME[res], period, buckets, topic, partition),
            )
            for (kind, scope_id, provider, res, period), buckets in parts
        ]
        for ((kind, scope_id, provider, res, _), _), rows in zip(
            parts, await _gather(reads), strict=True
        ):
            for bucket, applied, ev, aev, tok, atok, ref, blob in rows:
                cells[(kind, scope_id, provider, res, bucket)] = _Cell(
                    applied,
                    ev,
                    aev,
                    tok,
                    atok,
                    ref,
                    None if kind == "user" else decode_shares(blob or b""),
                )
        return cells

    def _cell_write(
        self, key: CellKey, cell: _Cell, topic: str, partition: int
    ) -> tuple[str, tuple[Any, ...], int]:
        kind, scope_id, provider, resolution, bucket = key
        blob = None if cell.shares is None else encode_shares(cell.shares)
        params = (
            kind,
            scope_id,
            provider,
            RES_NAME[resolution],
            _period(resolution, bucket),
            bucket,
            topic,
            partition,
            cell.applied_offset,
            cell.events,
            cell.allowed_events,
            cell.tokens,
            cell.allowed_tokens,
            cell.refunded_tokens,
            blob,
        )
        return "cell_write", params, 250 + 2 * (len(scope_id) + len(provider)) + len(blob or b"")

    def _raw_writes(self, facts: list[UsageFact]) -> list[tuple[str, tuple[Any, ...], int]]:
        """The ALL-scope raw rows: every fact, give-backs too (`decision` false)."""
        writes = []
        for fact in facts:
            params = (
                "all",
                "",
                fact.provider,
                _day(fact.occurred_at_ms),
                fact.occurred_at_ms,
                fact.event_id,
                fact.kind.value,
                fact.kind in DECISIONS,
                fact.user_id,
                fact.org_id,
                fact.tokens,
                fact.allowed,
                self._ttl,
            )
            size = 160 + 2 * (len(fact.event_id) + len(fact.user_id) + len(fact.org_id))
            writes.append(("raw_insert", params, size))
        return writes

    def _recent_writes(self, facts: list[UsageFact]) -> list[tuple[str, tuple[Any, ...], int]]:
        """One usage_recent row per (user or org scope, provider, day) of the batch's decisions.

        Keyed by the newest fact's time and a digest of the row's event ids: the same facts
        written again (a replay) are the same row, and a replay that finds some of them in
        raw already writes another row, never a smaller copy over this one (`latest()`
        de-duplicates by event id)."""
        groups: dict[tuple[str, str, str, int], list[UsageFact]] = {}
        for fact in facts:
            if fact.kind not in DECISIONS:
                continue
            day = _day(fact.occurred_at_ms)
            groups.setdefault(("user", fact.user_id, fact.provider, day), []).append(fact)
            if fact.org_id:
                groups.setdefault(("org", fact.org_id, fact.provider, day), []).append(fact)
        writes = []
        for (kind, scope_id, provider, day), group in groups.items():
            blob = encode_recent(group)
            newest = max(fact.occurred_at_ms for fact in group)
            params = (kind, scope_id, provider, day, newest, _chunk_id(group), blob, self._ttl)
            writes.append(("recent_insert", params, 120 + 2 * len(scope_id) + len(blob)))
        return writes

    def _index_writes(
        self, facts: list[UsageFact]
    ) -> tuple[
        set[tuple[ScopeKind, str, str]],
        set[tuple[ScopeKind, str, str, int]],
        list[tuple[str, tuple[Any, ...], int]],
    ]:
        """Days with raw rows (for `latest`) and providers per scope that this instance has
        not written yet (remembered once the writes succeed)."""
        providers: set[tuple[ScopeKind, str, str]] = set()
        days: set[tuple[ScopeKind, str, str, int]] = set()
        writes: list[tuple[str, tuple[Any, ...], int]] = []
        for fact in facts:
            if not fact.kind.is_decision:
                continue
            day = _day(fact.occurred_at_ms)
            for scope in scopes_of(fact):
                p_key = (scope.kind, scope.id, fact.provider)
                if p_key not in self._known_providers and p_key not in providers:
                    providers.add(p_key)
                    writes.append(
                        ("provider_insert", (scope.kind.value, scope.id, fact.provider), 100)
                    )
                d_key = (scope.kind, scope.id, fact.provider, day)
                if d_key not in self._known_days and d_key not in days:
                    days.add(d_key)
                    params = (scope.kind.value, scope.id, fact.provider, day, self._ttl + 86_400)
                    writes.append(("day_insert", params, 100))
        return providers, days, writes

    def _evict(self, source: _Source) -> None:
        """Drop cells well behind the newest bucket; raise the floor so they are read again."""
        if len(source.cells) < 10_000:
            return
        newest = source.max_occurred
        for cell_key in [k for k in source.cells if k[4] < newest - KEEP_MS[k[3]]]:
            del source.cells[cell_key]
            resolution, bucket = cell_key[3], cell_key[4]
            source.floor[resolution] = max(source.floor[resolution], bucket)

    async def _project_purchases(self, facts: list[PurchaseFact]) -> None:
        """Each saga's latest state: a join (terminal wins, then the later event), idempotent."""
        merged: dict[str, PurchaseView] = {}
        saga_ids = sorted({f.saga_id for f in facts})
        reads = [
            self._execute("purchase_get", (saga_ids[i : i + IN_CHUNK],))
            for i in range(0, len(saga_ids), IN_CHUNK)
        ]
        winners: dict[str, tuple[bool, int, str]] = {}
        for rows in await _gather(reads):
            for saga, user, org, provider, tokens, state, reason, created, updated, event in rows:
                view = PurchaseView(
                    saga,
                    user,
                    org,
                    provider,
                    tokens,
                    PurchaseState(state),
                    reason,
                    created,
                    updated,
                )
                merged[saga] = view
                winners[saga] = (view.state.terminal, updated, event)
        for fact in facts:
            rank = (fact.state.terminal, fact.occurred_at_ms, fact.event_id)
            old = merged.get(fact.saga_id)
            created = (
                fact.occurred_at_ms if old is None else min(old.created_at_ms, fact.occurred_at_ms)
            )
            if old is None or rank > winners[fact.saga_id]:
                winners[fact.saga_id] = rank
                merged[fact.saga_id] = PurchaseView(
                    fact.saga_id,
                    fact.user_id,
                    fact.org_id,
                    fact.provider,
                    fact.tokens,
                    fact.state,
                    fact.reason,
                    created,
                    fact.occurred_at_ms,
                )
            else:
                merged[fact.saga_id] = _with_created(old, created)
        writes = []
        for saga, view in merged.items():
            event = winners[saga][2]
            scopes = [Scope.everyone(), Scope(ScopeKind.USER, view.user_id)]
            if view.org_id:
                scopes.append(Scope(ScopeKind.ORG, view.org_id))
            for scope in scopes:
                params = (
                    scope.kind.value,
                    scope.id,
                    saga,
                    view.user_id,
                    view.org_id,
                    view.provider,
                    view.tokens,
                    view.state.value,
                    view.reason,
                    view.created_at_ms,
                    view.updated_at_ms,
                    event,
                )
                writes.append(("purchase_put", params, 200 + len(view.reason)))
        await self._write_all(writes)

    # --- queries --------------------------------------------------------------------------

    async def latest(self, scope: Scope, provider: str, limit: int) -> list[UsageFact]:
        if limit <= 0:
            return []
        days = await self._execute("days", (scope.kind.value, scope.id, provider))
        found: dict[str, UsageFact] = {}
        for (day,) in days:
            if scope.kind is ScopeKind.ALL:
                rows = await self._execute(
                    "raw_latest", (scope.kind.value, scope.id, provider, day, limit - len(found))
                )
                for event_id, at, kind, prov, user, org, tokens, allowed in rows:
                    found[event_id] = UsageFact(
                        event_id, at, FactKind(kind), prov, user, org, tokens, allowed
                    )
            else:
                await self._latest_of_day(scope, provider, day, limit, found)
            if len(found) >= limit:  # every older day's facts are older still
                break
        newest_first = sorted(found.values(), key=_newest_first, reverse=True)
        return newest_first[:limit]

    async def _latest_of_day(
        self, scope: Scope, provider: str, day: int, limit: int, found: dict[str, UsageFact]
    ) -> None:
        """Add the day's `limit` latest decisions of a user or org scope to `found`.

        Rows written before usage_recent existed (USER/ORG copies in usage_raw, until their TTL
        ends) first; then usage_recent rows, newest first: a row's facts are no newer than
        its `newest`, so reading stops at the first row older than the limit-th fact found."""
        key = (scope.kind.value, scope.id, provider, day)
        for event_id, at, kind, prov, user, org, tokens, allowed in await self._execute(
            "raw_latest", (*key, limit)
        ):
            found.setdefault(
                event_id, UsageFact(event_id, at, FactKind(kind), prov, user, org, tokens, allowed)
            )
        times = [fact.occurred_at_ms for fact in found.values()]
        heapq.heapify(times)
        while len(times) > limit:
            heapq.heappop(times)
        async with contextlib.aclosing(
            self._pages("recent_latest", key, fetch_size=limit)
        ) as pages:
            async for page in pages:
                for newest, blob in page:
                    if len(times) >= limit and newest < times[0]:
                        return
                    for fact in decode_recent(blob or b"", provider):
                        if fact.event_id in found:
                            continue  # a replay's copy
                        found[fact.event_id] = fact
                        if len(times) < limit:
                            heapq.heappush(times, fact.occurred_at_ms)
                        elif fact.occurred_at_ms > times[0]:
                            heapq.heapreplace(times, fact.occurred_at_ms)

    async def _pages(
        self, name: str, params: Sequence[Any], *, fetch_size: int
    ) -> AsyncGenerator[list[tuple[Any, ...]], None]:
        """One prepared statement's rows, a page of `fetch_size` at a time, fetched only as
        the caller asks for it."""
        session = await self._ready()
        statement = self._prepared[name].bind(params)
        statement.fetch_size = max(fetch_size, 1)
        try:
            future = session.execute_async(statement)
            while True:
                page = await _wrap(future)
                yield list(page or [])
                if not future.has_more_pages:
                    return
                future.clear_callbacks()
                future.start_fetching_next_page()
        except _OUTAGE as error:
            raise self._unavailable(error) from error

    async def buckets(
        self, scope: Scope, provider: str, resolution: Resolution, starts: Sequence[int]
    ) -> Mapping[int, Totals]:
        by_period: dict[int, list[int]] = {}
        for start in dict.fromkeys(starts):
            by_period.setdefault(_period(resolution.value, start), []).append(start)
        reads = [
            self._execute(
                "cells_read",
                (scope.kind.value, scope.id, provider, resolution.name, period, wanted),
            )
            for period, wanted in by_period.items()
        ]
        out: dict[int, Totals] = {}
        user = scope.id if scope.kind is ScopeKind.USER else None
        for rows in await _gather(reads):
            for bucket, ev, aev, tok, atok, ref, blob in rows:
                totals = out.get(bucket)
                if totals is None:
                    totals = out[bucket] = Totals()
                totals.events += ev
                totals.allowed_events += aev
                totals.tokens += tok
                totals.allowed_tokens += atok
                totals.refunded_tokens += ref
                if user is not None:
                    if ev:
                        _add_share(totals.users, user, tok, ev)
                else:
                    _shares_into(totals, blob)
        # A cell exists only once a fact counted in it, so every bucket read has usage (a
        # zero-token give-back alone still makes a bucket, as it does for Totals.of).
        return out

    async def providers(self, scope: Scope) -> list[str]:
        rows = await self._execute("providers", (scope.kind.value, scope.id))
        return sorted(row[0] for row in rows)

    async def _purchase_views(self, scope: Scope) -> list[PurchaseView]:
        rows = await self._execute("purchases", (scope.kind.value, scope.id))
        return [
            PurchaseView(saga, user, org, prov, tokens, PurchaseState(state), reason, created, upd)
            for saga, user, org, prov, tokens, state, reason, created, upd, _ in rows
        ]

    async def purchases(self, scope: Scope, limit: int) -> list[PurchaseView]:
        views = await self._purchase_views(scope)
        views.sort(key=lambda v: (v.created_at_ms, v.saga_id), reverse=True)  # as SQLite
        return views[: max(limit, 0)]

    async def purchase_totals(self, scope: Scope) -> PurchaseTotals:
        views = await self._purchase_views(scope)
        done = [v for v in views if v.state is PurchaseState.COMPLETED]
        failed = sum(1 for v in views if v.state is PurchaseState.FAILED)
        return PurchaseTotals(len(done), sum(v.tokens for v in done), failed)


def _with_created(view: PurchaseView, created: int) -> PurchaseView:
    if view.created_at_ms == created:
        return view
    return PurchaseView(
        view.saga_id,
        view.user_id,
        view.org_id,
        view.provider,
        view.tokens,
        view.state,
        view.reason,
        created,
        view.updated_at_ms,
    )


def _chunk_id(facts: Sequence[UsageFact]) -> int:
    """A signed 64-bit digest of the facts' event ids, in any order."""
    ids = "\0".join(sorted(fact.event_id for fact in facts)).encode()
    return int.from_bytes(hashlib.blake2b(ids, digest_size=8).digest(), "big", signed=True)


def _newest_first(fact: UsageFact) -> tuple[int, str]:
    return fact.occurred_at_ms, fact.event_id


# (scope kind value, scope id, provider, minute start)
MinuteKey = tuple[str, str, str, int]


def _minutes(fresh: Sequence[tuple[int, UsageFact]]) -> dict[MinuteKey, _Minute]:
    """The facts summed per scope (ALL, the user, the org if any), provider and minute."""
    minutes: dict[MinuteKey, _Minute] = {}
    for offset, fact in fresh:
        t, provider, decision = fact.occurred_at_ms, fact.provider, fact.kind in DECISIONS
        minute = t - t % MINUTE_MS
        scope_keys = [("all", "", provider, minute), ("user", fact.user_id, provider, minute)]
        if fact.org_id:
            scope_keys.append(("org", fact.org_id, provider, minute))
        for minute_key in scope_keys:
            summed = minutes.get(minute_key)
            if summed is None:
                summed = minutes[minute_key] = _Minute(
                    _Cell(shares=None if minute_key[0] == "user" else {}), offset
                )
            elif offset < summed.low:
                summed.low = offset
            summed.sum.add(fact, decision)
            summed.facts.append((offset, fact, decision))
    return minutes


def _cells_of(minute_key: MinuteKey) -> tuple[CellKey, CellKey, CellKey]:
    """The minute, hour and day cells of one scope's minute."""
    kind, scope_id, provider, minute = minute_key
    return (
        (kind, scope_id, provider, MINUTE_MS, minute),
        (kind, scope_id, provider, HOUR_MS, minute - minute % HOUR_MS),
        (kind, scope_id, provider, DAY_MS, minute - minute % DAY_MS),
    )


def _wrap(future: ResponseFuture) -> asyncio.Future[Any]:
    """An asyncio future resolved (on this loop) by the driver's callback thread."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def settle(setter: Callable[[Any], None], value: Any) -> None:
        if not done.done():
            setter(value)

    future.add_callbacks(
        lambda rows: loop.call_soon_threadsafe(settle, done.set_result, rows),
        lambda error: loop.call_soon_threadsafe(settle, done.set_exception, error),
    )
    return done


async def _gather(aws: Iterable[Awaitable[T]]) -> list[T]:
    """All of them, or the first error after the others have finished (nothing left running)."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]
