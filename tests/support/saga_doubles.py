"""Test doubles of the saga's parts (not the saga): participants, an outbox and a recovery
that keep their records in files, so a test reads what a worker subprocess did, also one it
killed. Configured by environment (the worker builds them through parts_from_env):

LEAKY_TEST_SAGA_DIR            where the files go (required)
LEAKY_TEST_SAGA_PARTICIPANTS   names, default "alpha,beta"
LEAKY_TEST_SAGA_FAIL           "name=N": that participant raises N times per "fail-" event
LEAKY_TEST_SAGA_DELAY_MS       how long each handle takes (default 0)
LEAKY_TEST_SAGA_BLOCKER        name of a participant that blocks on "block-" events until
                               the file <dir>/release exists
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky_tokens.token.adapters.saga_contract import OutboxRecord, SagaParts


def _append(path: Path, line: str) -> None:
    # One write of one line with O_APPEND: a SIGKILL leaves whole lines or none.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def lines(path: Path) -> list[str]:
    """The lines a double appended (empty if none yet)."""
    return path.read_text().split() if path.exists() else []


class RecordingParticipant:
    """Appends each handled event id to <dir>/<name>.handled; can fail or block on purpose."""

    def __init__(
        self, name: str, root: Path, fail_times: int = 0, blocks: bool = False, delay_s: float = 0
    ) -> None:
        self._name = name
        self._delay = delay_s
        self._root = root
        self._fail_times = fail_times
        self._blocks = blocks
        self._attempts: Counter[str] = Counter()

    @property
    def name(self) -> str:
        return self._name

    async def handle(self, envelope: EventEnvelope) -> None:
        event_id = envelope.event_id
        self._attempts[event_id] += 1
        _append(self._root / f"{self._name}.attempts", event_id)
        if event_id.startswith("fail-") and self._attempts[event_id] <= self._fail_times:
            raise RuntimeError(f"{self._name}: failing {event_id} on purpose")
        if self._blocks and event_id.startswith("block-"):
            # Another process releases it (the test): a file is all both can see.
            while not (self._root / "release").exists():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        if self._delay:
            await asyncio.sleep(self._delay)
        _append(self._root / f"{self._name}.handled", event_id)


def write_outbox(root: Path, records: Sequence[OutboxRecord]) -> None:
    """Put records in the file outbox (what a saga step's transaction would have written)."""
    for record in records:
        data = record.envelope.SerializeToString(deterministic=True).hex()
        _append(root / "outbox.pending", f"{record.seq},{record.topic},{data}")


class FileOutbox:
    """An OutboxSource over <dir>/outbox.pending, marks appended to <dir>/outbox.published."""

    def __init__(self, root: Path) -> None:
        self._root = root

    async def pending(self, limit: int) -> Sequence[OutboxRecord]:
        published = {int(s) for s in lines(self._root / "outbox.published")}
        found = []
        for line in lines(self._root / "outbox.pending"):
            seq, topic, data = line.split(",", 2)
            if int(seq) not in published:
                found.append(
                    OutboxRecord(int(seq), topic, EventEnvelope.FromString(bytes.fromhex(data)))
                )
        return sorted(found, key=lambda r: r.seq)[:limit]

    async def mark_published(self, seqs: Sequence[int]) -> None:
        for seq in seqs:
            _append(self._root / "outbox.published", str(seq))


class CountingRecovery:
    """Appends one line per recover_stuck call; never has anything to recover."""

    def __init__(self, root: Path) -> None:
        self._root = root

    async def recover_stuck(self, limit: int) -> int:
        _append(self._root / "recovery.calls", str(limit))
        return 0


def parts_from_env() -> SagaParts:
    """The worker's parts factory in tests (LEAKY_TOKEN_SAGA_PARTS_FACTORY points here)."""
    root = Path(os.environ["LEAKY_TEST_SAGA_DIR"])
    names = os.environ.get("LEAKY_TEST_SAGA_PARTICIPANTS", "alpha,beta").split(",")
    failing, _, times = os.environ.get("LEAKY_TEST_SAGA_FAIL", "=0").partition("=")
    blocker = os.environ.get("LEAKY_TEST_SAGA_BLOCKER", "")
    delay_s = int(os.environ.get("LEAKY_TEST_SAGA_DELAY_MS", "0")) / 1000
    participants = [
        RecordingParticipant(
            n, root, int(times) if n == failing else 0, blocks=n == blocker, delay_s=delay_s
        )
        for n in names
    ]
    return SagaParts(participants, FileOutbox(root), CountingRecovery(root))
