"""Putting a SQLite file in WAL mode when other processes may be opening it too."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

WAL_WAIT_S = 30.0  # as long as the busy timeout every opener uses


def enable_wal(conn: Any, wait_s: float = WAL_WAIT_S) -> None:
    """`PRAGMA journal_mode=WAL` on a DB-API connection (sqlite3, or a driver adapting it).

    Converting the journal needs the file alone. When waiting for it could deadlock (two
    openers of a fresh file, each holding the shared lock the other needs gone) SQLite answers
    "database is locked" at once instead of running the busy handler, whatever the busy
    timeout: seen as a flaky embedded event-log test (a writer and a restarted tailer opening
    one file). WAL is a property of the file, so the mode is read first (nothing to convert
    after the first open) and the conversion is retried with backoff for up to `wait_s`;
    another opener finishing it meanwhile counts as done.
    """
    deadline = time.monotonic() + wait_s
    delay = 0.005
    while True:
        cursor = conn.cursor()
        try:
            cursor.execute("PRAGMA journal_mode")
            row = cursor.fetchone()
            if row is not None and str(row[0]).lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            text = str(error).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() >= deadline:
                raise
        finally:
            cursor.close()
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
