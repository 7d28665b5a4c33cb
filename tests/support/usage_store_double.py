"""UsageStore test doubles that keep the port's promise honestly: a fact is applied once per
event id, whatever offset or batch brings it again.

`RecordingUsageStore` lives in memory (agent tests): it records every `project` call, can be
taken down (`outage`) so calls raise UsageStoreUnavailableError, and answers the read side
from the facts it kept. `SqliteRecordingStore` keeps the same in a SQLite file, so a worker
subprocess's projection survives its SIGKILL and the test reads it afterwards
(`store_from_env` is the worker's store_factory in the integration tests, with
LEAKY_TEST_USAGE_STORE_* its settings; the coordinator switches those tests to the Cassandra
store once it exists).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from leaky_tokens.analytics.domain.facts import (
    Fact,
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
    UsageStore,
    UsageStoreUnavailableError,
    scopes_of,
)
from leaky_tokens.analytics.domain.totals import Totals
from leaky_tokens.analytics.domain.windows import Resolution

STORE_PATH_ENV = "LEAKY_TEST_USAGE_STORE_PATH"
STORE_DELAY_ENV = "LEAKY_TEST_USAGE_STORE_DELAY_MS"


class _ReadSide:
    """The port's queries over `self.facts()` (brute force: it is a double)."""

    def facts(self) -> list[Fact]:
        raise NotImplementedError

    def _usage(self, scope: Scope, provider: str) -> list[UsageFact]:
        return [
            f
            for f in self.facts()
            if isinstance(f, UsageFact) and f.provider == provider and scope in scopes_of(f)
        ]

    async def latest(self, scope: Scope, provider: str, limit: int) -> list[UsageFact]:
        decisions = [f for f in self._usage(scope, provider) if f.kind.is_decision]
        decisions.sort(key=lambda f: (f.occurred_at_ms, f.event_id), reverse=True)
        return decisions[:limit]

    async def buckets(
        self, scope: Scope, provider: str, resolution: Resolution, starts: Sequence[int]
    ) -> Mapping[int, Totals]:
        wanted = set(starts)
        found: dict[int, Totals] = {}
        for fact in self._usage(scope, provider):
            start = resolution.floor(fact.occurred_at_ms)
            if start in wanted:
                found.setdefault(start, Totals()).add(fact)
        return found

    async def providers(self, scope: Scope) -> list[str]:
        return sorted(
            {f.provider for f in self.facts() if isinstance(f, UsageFact) and scope in scopes_of(f)}
        )

    def _purchases(self, scope: Scope) -> dict[str, list[PurchaseFact]]:
        sagas: dict[str, list[PurchaseFact]] = {}
        for f in self.facts():
            if not isinstance(f, PurchaseFact):
                continue
            if (
                scope.kind is ScopeKind.ALL
                or (scope.kind is ScopeKind.USER and f.user_id == scope.id)
                or (scope.kind is ScopeKind.ORG and f.org_id == scope.id)
            ):
                sagas.setdefault(f.saga_id, []).append(f)
        return sagas

    async def purchases(self, scope: Scope, limit: int) -> list[PurchaseView]:
        views = []
        for saga_id, steps in self._purchases(scope).items():
            steps.sort(key=lambda f: (f.state.terminal, f.occurred_at_ms, f.event_id))
            last, first = steps[-1], min(steps, key=lambda f: f.occurred_at_ms)
            views.append(
                PurchaseView(
                    saga_id,
                    last.user_id,
                    last.org_id,
                    last.provider,
                    last.tokens,
                    last.state,
                    last.reason,
                    first.occurred_at_ms,
                    last.occurred_at_ms,
                )
            )
        views.sort(key=lambda v: (v.created_at_ms, v.saga_id), reverse=True)
        return views[:limit]

    async def purchase_totals(self, scope: Scope) -> PurchaseTotals:
        views = await self.purchases(scope, limit=1 << 30)
        done = [v for v in views if v.state is PurchaseState.COMPLETED]
        failed = [v for v in views if v.state is PurchaseState.FAILED]
        return PurchaseTotals(len(done), sum(v.tokens for v in done), len(failed))


@dataclass
class RecordingUsageStore(_ReadSide):
    """In memory. `calls` has every project call's facts (failed ones included);
    `applied` the facts applied, once per event id, in the order they were."""

    calls: list[list[SourcedFact]] = field(default_factory=list)
    applied: dict[str, SourcedFact] = field(default_factory=dict)
    failures: int = 0  # calls that raised
    closed: bool = False
    # While down, project raises UsageStoreUnavailableError (and applies nothing).
    down: bool = False
    # While set, project blocks after recording the call (a test looks at acks meanwhile).
    hold: asyncio.Event | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    running: int = 0  # project calls under way now
    most_running: int = 0  # the most ever under way at once

    async def project(self, facts: Sequence[SourcedFact]) -> None:
        self.calls.append(list(facts))
        self.entered.set()
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.hold is not None:
                await self.hold.wait()
            if self.down:
                self.failures += 1
                raise UsageStoreUnavailableError("the test store is down")
            for sourced in facts:
                self.applied.setdefault(sourced.fact.event_id, sourced)
        finally:
            self.running -= 1

    def facts(self) -> list[Fact]:
        return [s.fact for s in self.applied.values()]

    async def close(self) -> None:
        self.closed = True


def _encode(fact: Fact) -> str:
    data = asdict(fact)
    data["type"] = "usage" if isinstance(fact, UsageFact) else "purchase"
    for key in ("kind", "state"):
        if key in data:
            data[key] = data[key].value
    return json.dumps(data)


def _decode(text: str) -> Fact:
    data = json.loads(text)
    if data.pop("type") == "usage":
        data["kind"] = FactKind(data["kind"])
        return UsageFact(**data)
    data["state"] = PurchaseState(data["state"])
    return PurchaseFact(**data)


class SqliteRecordingStore(_ReadSide):
    """In a SQLite file: each fact once per event id (INSERT OR IGNORE in one transaction per
    call, so a call killed midway applied nothing), plus a row per fact received, so a test
    sees the replays. Down while the file `<path>.down` exists."""

    def __init__(self, path: Path, *, delay_s: float = 0.0) -> None:
        self.path = path
        self._delay = delay_s  # each project call takes this long (a kill lands mid-stream)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS facts (event_id TEXT PRIMARY KEY, topic TEXT,"
            " part INTEGER, off INTEGER, fact TEXT)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS received (event_id TEXT, topic TEXT, part INTEGER,"
            " off INTEGER)"
        )

    @property
    def down_flag(self) -> Path:
        return self.path.with_name(self.path.name + ".down")

    async def project(self, facts: Sequence[SourcedFact]) -> None:
        if self.down_flag.exists():
            raise UsageStoreUnavailableError("the test store is down")
        if self._delay:
            await asyncio.sleep(self._delay)
        rows = [(s.fact.event_id, s.topic, s.partition, s.offset) for s in facts]
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO received VALUES (?, ?, ?, ?)", rows)
            self._db.executemany(
                "INSERT OR IGNORE INTO facts VALUES (?, ?, ?, ?, ?)",
                [(*row, _encode(s.fact)) for row, s in zip(rows, facts, strict=True)],
            )

    def facts(self) -> list[Fact]:
        return [_decode(t) for (t,) in self._db.execute("SELECT fact FROM facts ORDER BY rowid")]

    def received(self) -> list[tuple[str, str, int, int]]:
        return list(self._db.execute("SELECT event_id, topic, part, off FROM received"))

    async def close(self) -> None:
        self._db.close()


def store_from_env() -> SqliteRecordingStore:
    """The worker's store_factory in integration tests: the file LEAKY_TEST_USAGE_STORE_PATH."""
    delay_s = int(os.environ.get(STORE_DELAY_ENV, "0")) / 1000
    return SqliteRecordingStore(Path(os.environ[STORE_PATH_ENV]), delay_s=delay_s)


class SlowedStore:
    """A real store whose `project` first waits (so a test's kill lands mid-stream)."""

    def __init__(self, inner: UsageStore, delay_s: float) -> None:
        self._inner = inner
        self._delay_s = delay_s

    async def project(self, facts: Sequence[SourcedFact]) -> None:
        await asyncio.sleep(self._delay_s)
        await self._inner.project(facts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def cassandra_from_env() -> UsageStore:
    """The worker's store_factory in integration tests: the real Cassandra store (as the
    LEAKY_ANALYTICS_CASSANDRA_* variables say), slowed by LEAKY_TEST_USAGE_STORE_DELAY_MS."""
    from leaky_tokens.analytics.adapters.store_openers import open_cassandra

    store = await open_cassandra()
    delay_s = int(os.environ.get(STORE_DELAY_ENV, "0")) / 1000
    return SlowedStore(store, delay_s) if delay_s else store
