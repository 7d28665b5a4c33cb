"""The embedded event log: a SQLite file in LEAKY_DATA_DIR playing Kafka's part (ADR 0038).

In `leaky up` the token service appends its usage and purchase events here and the analytics
service, another process, tails it. One table holds every topic's records; `seq` is the log's
offset (one partition per topic, offsets only grow), `appended_ms` when the writer appended it.
The file is in WAL mode: the writer commits (fsynced: a batch acknowledged is on disk) while
readers in other processes read beside it. Retention bounds it: records beyond the newest
`keep_rows` of a topic, or appended more than `keep_seconds` ago, are deleted, and the highest
deleted offset per topic is remembered so a reader that fell behind it knows it lost records.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from leaky_tokens.runtime import paths
from leaky_tokens.runtime.errors import UnavailableError
from leaky_tokens.runtime.settings import SettingsError, doc
from leaky_tokens.runtime.sqlite_wal import enable_wal

T = TypeVar("T")
DEFAULT_FILE = "events.sqlite"
PRUNE_INTERVAL_MS = 5_000  # a writer prunes at most this often (on append)
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    value BLOB NOT NULL,
    appended_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_topic_seq ON events (topic, seq);
CREATE TABLE IF NOT EXISTS truncated (
    topic TEXT PRIMARY KEY,
    through_seq INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class EventLogSettings:
    """Where the embedded event log lives and how much of it is kept (token: the writer;
    analytics: the reader)."""

    events_log_file: str = field(
        default="",
        metadata=doc(
            "Embedded mode: the SQLite event log the token service appends its usage and "
            f"purchase events to and analytics tails; empty = {DEFAULT_FILE} in LEAKY_DATA_DIR."
        ),
    )
    events_log_keep_rows: int = field(
        default=1_000_000,
        metadata=doc("Embedded event log: the newest records kept per topic (older deleted)."),
    )
    events_log_keep_seconds: float = field(
        default=7 * 24 * 3600.0,
        metadata=doc("Embedded event log: records appended longer ago than this are deleted."),
    )

    def __post_init__(self) -> None:
        if self.events_log_keep_rows <= 0:
            raise SettingsError(
                f"events_log_keep_rows: must be positive, got {self.events_log_keep_rows}"
            )
        if self.events_log_keep_seconds <= 0:
            raise SettingsError(
                f"events_log_keep_seconds: must be positive, got {self.events_log_keep_seconds}"
            )

    def events_log_path(self) -> Path:
        """The log file: the setting, else events.sqlite in the data directory."""
        if self.events_log_file:
            return Path(self.events_log_file)
        return paths.data_dir() / DEFAULT_FILE


class EventLogUnavailableError(UnavailableError):
    """The log file could not be read or written now (locked too long, disk full, ...)."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One record: its offset, topic, partition key, event id, encoded envelope, append time."""

    seq: int
    topic: str
    key: str
    event_id: str
    value: bytes
    appended_ms: int


@dataclass(frozen=True, slots=True)
class Entry:
    """What a writer appends: partition key, event id, encoded value."""

    key: str
    event_id: str
    value: bytes


class EventLogFile:
    """Appends and reads of one log file. Every call runs on the instance's own thread (its
    connection never crosses threads); any number of instances, in any processes, may share
    the file: SQLite serialises writers (BEGIN IMMEDIATE, a busy timeout), WAL lets readers in.
    """

    def __init__(
        self,
        path: Path,
        *,
        keep_rows: int = EventLogSettings.events_log_keep_rows,
        keep_seconds: float = EventLogSettings.events_log_keep_seconds,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        self.path = path
        self._keep_rows, self._keep_ms = keep_rows, int(keep_seconds * 1000)
        self._now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="event-log")
        self._conn: sqlite3.Connection | None = None
        self._pruned_ms: dict[str, int] = {}  # per topic: when this instance last pruned it
        self._closed = False

    @classmethod
    def open(
        cls, settings: EventLogSettings, now_ms: Callable[[], int] | None = None
    ) -> EventLogFile:
        """The log the settings name (the file is created on first use)."""
        return cls(
            settings.events_log_path(),
            keep_rows=settings.events_log_keep_rows,
            keep_seconds=settings.events_log_keep_seconds,
            now_ms=now_ms,
        )

    async def append(self, topic: str, entries: Sequence[Entry]) -> int:
        """Append the entries in one transaction, durable when this returns; the last offset
        given (0 for an empty batch). Prunes the topic first when it is time to."""
        return await self._run(lambda conn: self._append(conn, topic, entries))

    async def read(self, topic: str, after_seq: int, limit: int) -> list[LogRecord]:
        """Up to `limit` records of `topic` with an offset above `after_seq`, in offset order."""
        return await self._run(lambda conn: _read(conn, topic, after_seq, limit))

    async def lag_ms(self, topic: str, after_seq: int) -> int:
        """How far a reader at `after_seq` is behind the newest record: the newest record's
        append time minus that of the first one it has not read (0 when it has read all)."""
        return await self._run(lambda conn: _lag(conn, topic, after_seq))

    async def high_water(self, topic: str) -> int:
        """The highest offset `topic` ever had in this file, kept or deleted (0: none). A
        reader positioned above it is reading another, replaced file."""
        return await self._run(lambda conn: _high_water(conn, topic))

    async def truncated_through(self, topic: str) -> int:
        """The highest offset retention deleted from `topic` (0: none)."""
        return await self._run(lambda conn: _truncated(conn, topic))

    async def prune(self) -> int:
        """Apply retention to every topic now; how many records were deleted."""
        return await self._run(self._prune_all)

    async def close(self) -> None:
        """Close the connection and the thread; later calls fail."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._disconnect)
        self._thread.shutdown(wait=True)

    # --- on the log's thread --------------------------------------------------------------
    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise EventLogUnavailableError("the event log is closed")
        loop = asyncio.get_running_loop()

        def call() -> T:
            try:
                return work(self._connection())
            except sqlite3.Error as error:
                self._disconnect()  # reopened by the next call
                raise EventLogUnavailableError(
                    f"event log {self.path.name}: {error}", reason="EVENT_LOG_UNAVAILABLE"
                ) from error

        return await loop.run_in_executor(self._thread, call)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            try:
                enable_wal(conn, BUSY_TIMEOUT_S)
                conn.execute("PRAGMA synchronous=FULL")  # an acknowledged batch survives power loss
                with _immediate(conn):
                    _create(conn)
            except sqlite3.Error:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _append(self, conn: sqlite3.Connection, topic: str, entries: Sequence[Entry]) -> int:
        now = self._now_ms()
        with _immediate(conn):
            # Per topic: with one clock for all, a busy topic took every slot and a quiet
            # one appended by the same instance was never pruned (it grew without bound).
            pruned = self._pruned_ms.get(topic)
            if pruned is None or now - pruned >= PRUNE_INTERVAL_MS:
                self._prune(conn, topic, now)
                self._pruned_ms[topic] = now
            last = 0
            for entry in entries:
                cursor = conn.execute(
                    "INSERT INTO events (topic, key, event_id, value, appended_ms)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (topic, entry.key, entry.event_id, entry.value, now),
                )
                last = cursor.lastrowid or last
            return last

    def _prune_all(self, conn: sqlite3.Connection) -> int:
        now = self._now_ms()
        with _immediate(conn):
            topics = [row[0] for row in conn.execute("SELECT DISTINCT topic FROM events")]
            deleted = sum(self._prune(conn, topic, now) for topic in topics)
        self._pruned_ms = dict.fromkeys(topics, now)
        return deleted

    def _prune(self, conn: sqlite3.Connection, topic: str, now: int) -> int:
        # Every query here walks the (topic, seq) index from one end and stops where the
        # answer is: a prune costs what it deletes, plus at most keep_rows index entries
        # when the topic's offsets span more than that, never the file's size: scanning every
        # row's appended_ms (no index) every PRUNE_INTERVAL_MS took several % of a busy token
        # service's CPU with a few 10,000 rows (ADR 0050).
        first = _scalar(conn, "SELECT min(seq) FROM events WHERE topic = ?", topic)
        last = _scalar(conn, "SELECT max(seq) FROM events WHERE topic = ?", topic)
        if first is None or last is None:
            return 0
        through = 0
        if last - first + 1 > self._keep_rows:  # fewer offsets than that: fewer rows too
            newest_dropped = (
                "SELECT seq FROM events WHERE topic = ? ORDER BY seq DESC LIMIT 1 OFFSET ?"
            )
            through = _scalar(conn, newest_dropped, topic, self._keep_rows) or 0
        # By age: the records before the oldest one still young (appends come in time order;
        # behind a writer whose clock lags, records stay until that writer's have aged).
        first_young = (
            "SELECT seq FROM events WHERE topic = ? AND appended_ms >= ? ORDER BY seq LIMIT 1"
        )
        young = _scalar(conn, first_young, topic, now - self._keep_ms)
        if young is None:
            through = last
        elif young > first:
            before = "SELECT max(seq) FROM events WHERE topic = ? AND seq < ?"
            through = max(through, _scalar(conn, before, topic, young) or 0)
        if through <= 0:
            return 0
        deleted = conn.execute(
            "DELETE FROM events WHERE topic = ? AND seq <= ?", (topic, through)
        ).rowcount
        conn.execute(
            "INSERT INTO truncated (topic, through_seq) VALUES (?, ?) ON CONFLICT (topic)"
            " DO UPDATE SET through_seq = max(through_seq, excluded.through_seq)",
            (topic, through),
        )
        return deleted


def _scalar(conn: sqlite3.Connection, sql: str, *args: object) -> int | None:
    row = conn.execute(sql, args).fetchone()
    return None if row is None else row[0]


def _create(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, taking the write lock up front (waiting up to the busy timeout)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _read(conn: sqlite3.Connection, topic: str, after_seq: int, limit: int) -> list[LogRecord]:
    rows = conn.execute(
        "SELECT seq, topic, key, event_id, value, appended_ms FROM events"
        " WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?",
        (topic, after_seq, limit),
    ).fetchall()
    return [LogRecord(r[0], r[1], r[2], r[3], bytes(r[4]), r[5]) for r in rows]


def _lag(conn: sqlite3.Connection, topic: str, after_seq: int) -> int:
    row = conn.execute(
        "SELECT (SELECT appended_ms FROM events WHERE topic = ? ORDER BY seq DESC LIMIT 1),"
        " (SELECT appended_ms FROM events WHERE topic = ? AND seq > ? ORDER BY seq LIMIT 1)",
        (topic, topic, after_seq),
    ).fetchone()
    newest, first_unread = row
    if newest is None or first_unread is None:
        return 0
    return max(0, int(newest) - int(first_unread))


def _truncated(conn: sqlite3.Connection, topic: str) -> int:
    row = conn.execute("SELECT through_seq FROM truncated WHERE topic = ?", (topic,)).fetchone()
    return int(row[0]) if row else 0


def _high_water(conn: sqlite3.Connection, topic: str) -> int:
    row = conn.execute("SELECT max(seq) FROM events WHERE topic = ?", (topic,)).fetchone()
    return max(int(row[0] or 0), _truncated(conn, topic))
