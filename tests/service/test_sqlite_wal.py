"""enable_wal waits out another connection holding the file (SQLite's busy handler does not)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from leaky_tokens.runtime.sqlite_wal import enable_wal


def _mode(path: Path) -> str:
    with closing(sqlite3.connect(path)) as conn:  # (sqlite3's own `with` does not close)
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])


class _Cursor:
    def __init__(self, conn: _Contended) -> None:
        self.conn = conn
        self.row: tuple[str] | None = None

    def execute(self, sql: str) -> None:
        self.conn.statements.append(sql)
        if sql == "PRAGMA journal_mode":
            self.row = (self.conn.mode,)
        elif self.conn.refusals:
            self.conn.refusals -= 1
            # What SQLite answers, with no busy wait, when two openers would deadlock.
            raise sqlite3.OperationalError("database is locked")
        else:
            self.conn.mode = "wal"

    def fetchone(self) -> tuple[str] | None:
        return self.row

    def close(self) -> None:
        pass


class _Contended:
    """A DB-API connection whose conversion is refused `refusals` times."""

    def __init__(self, refusals: int, mode: str = "delete") -> None:
        self.refusals, self.mode = refusals, mode
        self.statements: list[str] = []

    def cursor(self) -> _Cursor:
        return _Cursor(self)


def test_a_refused_conversion_is_retried_until_it_takes() -> None:
    conn = _Contended(refusals=3)
    enable_wal(conn)
    assert conn.mode == "wal"
    assert conn.statements.count("PRAGMA journal_mode=WAL") == 4


def test_another_opener_finishing_the_conversion_counts_as_done() -> None:
    conn = _Contended(refusals=1)
    original = conn.cursor

    def converted_meanwhile() -> _Cursor:
        if conn.refusals == 0:
            conn.mode = "wal"  # the other process's conversion landed
        return original()

    conn.cursor = converted_meanwhile  # type: ignore[method-assign]
    enable_wal(conn)
    assert conn.statements.count("PRAGMA journal_mode=WAL") == 1


def test_a_refusal_past_the_wait_is_raised() -> None:
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        enable_wal(_Contended(refusals=10**9), wait_s=0)


def test_a_file_already_in_wal_mode_needs_no_lock(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    with closing(sqlite3.connect(path)) as first:
        first.execute("PRAGMA journal_mode=WAL")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a writer at work: readers and the mode query still run
    opener = sqlite3.connect(path, timeout=30)
    enable_wal(opener, wait_s=0)
    holder.execute("ROLLBACK")
    holder.close()
    opener.close()
    assert _mode(path) == "wal"


def test_other_errors_are_not_retried(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.close()
    with pytest.raises(sqlite3.ProgrammingError):
        enable_wal(conn)
