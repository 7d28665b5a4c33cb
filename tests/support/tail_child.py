"""A child process that tails an event log into the SQLite usage store until killed:
`python -m tests.support.tail_child LOG DB` (the projection's crash test SIGKILLs it)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from leaky_tokens.analytics.adapters.log_tailer import LogTailer
from leaky_tokens.analytics.adapters.sqlite_usage_store import open_sqlite_usage_store
from leaky_tokens.runtime.event_log_file import EventLogFile


async def main(log_path: str, db_path: str) -> None:
    store = await open_sqlite_usage_store(f"sqlite+aiosqlite:///{db_path}", raw_ttl_seconds=3600)
    log = EventLogFile(Path(log_path))
    tailer = LogTailer(log, store, ["leaky.usage.v1"], batch=20)
    print("tailing", flush=True)
    while True:
        await tailer.run_once()
        await asyncio.sleep(0.005)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
