"""The embedded event log file, the token's file bus and the analytics tailer (ADR 0038):
durable appends, retention, crash and restart without loss or double counting, poison kept
aside with its reason."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky_tokens.analytics.adapters.log_tailer import LogTailer, ProjectionMetrics
from leaky_tokens.analytics.adapters.sqlite_usage_store import (
    DeadLetter,
    SqliteUsageStore,
    open_sqlite_usage_store,
)
from leaky_tokens.analytics.domain.facts import FactKind, SourcedFact, UsageFact
from leaky_tokens.analytics.domain.ports import Scope, UsageStoreUnavailableError
from leaky_tokens.analytics.domain.totals import Totals
from leaky_tokens.analytics.domain.windows import Resolution
from leaky_tokens.runtime.event_log_file import (
    PRUNE_INTERVAL_MS,
    Entry,
    EventLogFile,
    EventLogSettings,
)
from leaky_tokens.token.adapters.event_bus import PublishError
from leaky_tokens.token.adapters.event_codec import usage_event
from leaky_tokens.token.adapters.file_event_bus import FileEventBus
from leaky_tokens.token.adapters.in_memory_decision_store import InMemoryDecisionStore
from leaky_tokens.token.adapters.relay_factory import build_relay
from leaky_tokens.token.adapters.relay_settings import RelaySettings
from leaky_tokens.token.adapters.settings import TokenStoreSettings
from leaky_tokens.token.domain.decision import Level
from leaky_tokens.token.domain.ports import Subject
from tests.support.wait import eventually

T0 = 1_780_000_000_000
USAGE, PURCHASE = "leaky.usage.v1", "leaky.purchase.v1"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def now_ms(self) -> int:
        return self.now


def consumed(event_id: str, *, user: str = "alice", tokens: int = 10) -> EventEnvelope:
    envelope = EventEnvelope(event_id=event_id, partition_key=user)
    envelope.occurred_at.CopyFrom(Timestamp(seconds=T0 // 1000))
    body = envelope.token_usage_recorded
    body.user_id, body.provider, body.tokens, body.allowed = user, "openai", tokens, True
    return envelope


def entries(envelopes: Sequence[EventEnvelope]) -> list[Entry]:
    return [Entry(e.partition_key, e.event_id, e.SerializeToString()) for e in envelopes]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteUsageStore]:
    opened = await open_sqlite_usage_store(
        f"sqlite+aiosqlite:///{tmp_path / 'analytics.db'}", raw_ttl_seconds=3600
    )
    yield opened
    await opened.close()


async def test_appends_are_durable_ordered_and_readable_from_another_instance(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.sqlite"
    writer = EventLogFile(path)
    last = await writer.append(USAGE, entries([consumed("a"), consumed("b")]))
    await writer.append(PURCHASE, [Entry("k", "p", b"\x01")])
    await writer.append(USAGE, entries([consumed("c")]))
    await writer.close()
    reader = EventLogFile(path)  # reopened: what was acknowledged is there
    got = await reader.read(USAGE, 0, 10)
    assert [r.event_id for r in got] == ["a", "b", "c"]
    assert got[1].seq == last
    assert got[0].seq < got[1].seq < got[2].seq
    assert [r.event_id for r in await reader.read(USAGE, got[0].seq, 1)] == ["b"]
    assert [r.value for r in await reader.read(PURCHASE, 0, 10)] == [b"\x01"]
    assert await reader.read(USAGE, got[2].seq, 10) == []
    await reader.close()


async def test_retention_keeps_the_newest_rows_and_drops_old_ones(tmp_path: Path) -> None:
    clock = Clock()
    log = EventLogFile(
        tmp_path / "events.sqlite", keep_rows=3, keep_seconds=60, now_ms=clock.now_ms
    )
    for i in range(5):
        await log.append(USAGE, entries([consumed(f"e{i}")]))
    assert await log.prune() == 2
    kept = await log.read(USAGE, 0, 10)
    assert [r.event_id for r in kept] == ["e2", "e3", "e4"]
    assert await log.truncated_through(USAGE) == kept[0].seq - 1
    clock.now += 61_000  # every record is now older than a minute
    await log.append(USAGE, entries([consumed("new")]))  # an append prunes when it is time
    assert [r.event_id for r in await log.read(USAGE, 0, 10)] == ["new"]
    assert await log.truncated_through(USAGE) == kept[-1].seq
    await log.close()


async def test_age_retention_deletes_the_aged_records_before_the_first_young_one(
    tmp_path: Path,
) -> None:
    # Retention walks from the oldest record and stops at the first young one (ADR 0050): a
    # record a lagging writer appended after it waits for it, and is never a reason to delete
    # the young one (deleting through the newest aged offset did that).
    clock = Clock()
    path = tmp_path / "events.sqlite"
    log = EventLogFile(path, keep_seconds=60, now_ms=clock.now_ms)
    lagging = EventLogFile(path, keep_seconds=60, now_ms=lambda: clock.now - 40_000)
    await log.append(USAGE, entries([consumed("old")]))
    clock.now += 30_000
    await log.append(USAGE, entries([consumed("young")]))
    await lagging.append(USAGE, entries([consumed("lagging")]))  # stamped 10 s before "old"
    clock.now += 45_000  # "old" and "lagging" are past 60 s, "young" is 45 s old
    assert await log.prune() == 1
    kept = await log.read(USAGE, 0, 10)
    assert [r.event_id for r in kept] == ["young", "lagging"]
    assert await log.truncated_through(USAGE) == kept[0].seq - 1
    clock.now += 20_000  # now "young" has aged too
    assert await log.prune() == 2
    assert await log.read(USAGE, 0, 10) == []
    assert await log.truncated_through(USAGE) == kept[-1].seq
    await lagging.close()
    await log.close()


async def test_row_retention_counts_rows_not_offsets(tmp_path: Path) -> None:
    # Another topic's records between this one's leave gaps in its offsets: a topic whose
    # offset span is wider than keep_rows but whose rows are not more keeps them all.
    log = EventLogFile(tmp_path / "events.sqlite", keep_rows=3)
    for i in range(3):
        await log.append(USAGE, entries([consumed(f"u{i}")]))
        await log.append(PURCHASE, entries([consumed(f"p{i}")]))
    assert await log.prune() == 0
    await log.append(USAGE, entries([consumed("u3")]))
    assert await log.prune() == 1
    assert [r.event_id for r in await log.read(USAGE, 0, 10)] == ["u1", "u2", "u3"]
    assert len(await log.read(PURCHASE, 0, 10)) == 3
    await log.close()


async def test_a_quiet_topic_is_pruned_beside_a_busy_one(tmp_path: Path) -> None:
    # One instance appending two topics: the busy one must not take every pruning slot.
    clock = Clock()
    log = EventLogFile(tmp_path / "events.sqlite", keep_rows=1, now_ms=clock.now_ms)
    for i in range(6):
        clock.now += PRUNE_INTERVAL_MS
        await log.append(USAGE, entries([consumed(f"u{i}")]))
        clock.now += 1
        await log.append(PURCHASE, entries([consumed(f"p{i}")]))
    assert len(await log.read(USAGE, 0, 10)) == 2  # pruned on its last append, then one more
    assert len(await log.read(PURCHASE, 0, 10)) == 2
    await log.close()


async def test_lag_is_how_far_behind_the_newest_record_a_reader_is(tmp_path: Path) -> None:
    clock = Clock()
    log = EventLogFile(tmp_path / "events.sqlite", now_ms=clock.now_ms)
    first = await log.append(USAGE, entries([consumed("a")]))
    clock.now += 4_000
    second = await log.append(USAGE, entries([consumed("b")]))
    assert await log.lag_ms(USAGE, 0) == 4_000
    assert await log.lag_ms(USAGE, first) == 0  # the unread one is the newest
    assert await log.lag_ms(USAGE, second) == 0
    assert await log.lag_ms(PURCHASE, 0) == 0
    await log.close()


async def test_the_file_bus_appends_before_subscribers_and_fails_when_the_log_does(
    tmp_path: Path,
) -> None:
    log = EventLogFile(tmp_path / "events.sqlite")
    bus = FileEventBus(log)
    seen: list[str] = []

    async def subscriber(topic: str, envelope: EventEnvelope) -> None:
        assert [r.event_id for r in await log.read(topic, 0, 10)][-1] == "b"  # already durable
        seen.append(envelope.event_id)

    bus.subscribe(subscriber)
    await bus.publish(USAGE, [consumed("a"), consumed("b")])
    assert seen == ["a", "b"]
    (tmp_path / "events.sqlite").unlink()
    (tmp_path / "events.sqlite").mkdir()  # the file is gone and cannot be recreated
    broken = FileEventBus(EventLogFile(tmp_path / "events.sqlite"))
    broken.subscribe(subscriber)
    with pytest.raises(PublishError):
        await broken.publish(USAGE, [consumed("c")])
    assert seen == ["a", "b"]  # nobody saw the batch the log refused
    await broken.close()
    await bus.close()
    with pytest.raises(PublishError):
        await bus.publish(USAGE, [consumed("d")])


async def test_embedded_defaults_relay_a_real_decision_to_the_log_and_to_subscribers(
    tmp_path: Path,
) -> None:
    """(Was a unit test: the embedded default bus now writes the log file.)"""
    store, clock = InMemoryDecisionStore(), Clock()
    settings = RelaySettings(events_log_file=str(tmp_path / "events.sqlite"))
    relayer = build_relay(TokenStoreSettings(), settings, store, now_ms=clock.now_ms)
    assert isinstance(relayer.bus, FileEventBus)
    got: list[tuple[str, EventEnvelope]] = []

    async def analytics(topic: str, envelope: EventEnvelope) -> None:
        got.append((topic, envelope))

    relayer.bus.subscribe(analytics)
    await store.credit_balance(Subject("alice", "openai"), Level.USER_QUOTA, 1, "g-0", T0)
    stored = (await store.read_events(0, "", 10))[0].event
    assert await relayer.relay_once() == 1
    assert [(t, usage_event(e)) for t, e in got] == [(USAGE, stored)]
    (record,) = await relayer.bus.log.read(USAGE, 0, 10)
    logged = EventEnvelope()
    logged.ParseFromString(record.value)
    assert usage_event(logged) == stored
    assert record.event_id == logged.event_id
    await relayer.bus.close()


def test_the_log_settings_default_to_the_data_directory_and_refuse_nonsense(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEAKY_DATA_DIR", str(tmp_path))
    assert EventLogSettings().events_log_path() == tmp_path.resolve() / "events.sqlite"
    with pytest.raises(ValueError, match="events_log_keep_rows"):
        EventLogSettings(events_log_keep_rows=0)


class FlakyStore(SqliteUsageStore):
    """Fails its `fail_on`-th apply (the database away), once."""

    def __init__(self, inner: SqliteUsageStore, fail_on: int) -> None:
        self.__dict__.update(inner.__dict__)
        self.applies, self.fail_on = 0, fail_on

    async def apply(self, *args: object, **kwargs: object) -> None:
        self.applies += 1
        if self.applies == self.fail_on:
            raise UsageStoreUnavailableError("the analytics database is away")
        await super().apply(*args, **kwargs)  # type: ignore[arg-type]


async def written(log: EventLogFile, n: int, dup_every: int = 0) -> list[EventEnvelope]:
    """n distinct consume events in batches of 7, some published twice (at-least-once)."""
    events = [consumed(f"ev-{i}", user=f"u{i % 5}", tokens=i) for i in range(n)]
    for i in range(0, n, 7):
        batch = events[i : i + 7]
        await log.append(USAGE, entries(batch))
        if dup_every and (i // 7) % dup_every == 0:
            await log.append(USAGE, entries(batch))  # the relay retried a batch
    return events


def expected(events: Sequence[EventEnvelope]) -> Totals:
    return Totals.of(
        UsageFact(
            e.event_id,
            T0,
            FactKind.CONSUME,
            "openai",
            e.partition_key,
            "",
            e.token_usage_recorded.tokens,
            True,
        )
        for e in events
    )


async def day_totals(store: SqliteUsageStore) -> Totals:
    day = Resolution.DAY.floor(T0)
    return (await store.buckets(Scope.everyone(), "openai", Resolution.DAY, [day]))[day]


async def test_a_failed_pass_and_a_restart_resume_without_loss_or_double_counting(
    tmp_path: Path, store: SqliteUsageStore
) -> None:
    log = EventLogFile(tmp_path / "events.sqlite")
    events = await written(log, 100, dup_every=3)
    registry = CollectorRegistry()
    flaky = FlakyStore(store, fail_on=4)
    tailer = LogTailer(log, flaky, [USAGE], batch=10, metrics=ProjectionMetrics(registry))
    with pytest.raises(UsageStoreUnavailableError):
        await tailer.run_once()  # three batches committed, the fourth not
    assert await store.raw_count() < 100
    # A "crash": a new store and tailer on the same files, resuming from the stored position.
    await store.close()
    reopened = await open_sqlite_usage_store(
        f"sqlite+aiosqlite:///{tmp_path / 'analytics.db'}", raw_ttl_seconds=3600
    )
    again = LogTailer(EventLogFile(log.path), reopened, [USAGE], batch=10)
    in_log = len(await log.read(USAGE, 0, 1000))  # 100 events, 5 batches of 7 twice
    assert in_log == 135
    assert await again.run_once() == in_log - 30  # from where the committed batches ended
    assert await reopened.raw_count() == 100
    assert await day_totals(reopened) == expected(events)
    assert await again.run_once() == 0
    await again.log.close()
    await reopened.close()
    await log.close()


async def test_the_running_tailer_retries_a_failed_batch_and_projects_everything(
    tmp_path: Path, store: SqliteUsageStore
) -> None:
    log = EventLogFile(tmp_path / "events.sqlite")
    registry = CollectorRegistry()
    flaky = FlakyStore(store, fail_on=2)
    tailer = LogTailer(
        log, flaky, [USAGE], batch=10, poll_s=0.01, backoff_s=0.01, backoff_max_s=0.02,
        metrics=ProjectionMetrics(registry),
    )  # fmt: skip
    tailer.start()
    events = await written(log, 60, dup_every=2)
    tailer.kick()

    async def caught_up() -> bool:
        return await store.position(USAGE) == (await log.read(USAGE, 0, 1000))[-1].seq

    await eventually(caught_up, 10, what="every record projected", interval=0.02)
    await tailer.stop()
    assert await store.raw_count() == 60
    assert await day_totals(store) == expected(events)
    assert registry.get_sample_value("leaky_analytics_projection_failures_total") == 1
    assert (
        registry.get_sample_value("leaky_analytics_projection_lag_seconds", {"topic": USAGE}) == 0
    )
    await log.close()


def _delete_log(directory: Path) -> None:
    for leftover in directory.glob("events.sqlite*"):  # the file, its WAL and shared memory
        leftover.unlink()


async def test_a_replaced_log_file_is_projected_from_its_start(
    tmp_path: Path, store: SqliteUsageStore
) -> None:
    path = tmp_path / "events.sqlite"
    log = EventLogFile(path)
    await log.append(USAGE, entries([consumed(f"old-{i}") for i in range(3)]))
    assert await LogTailer(log, store, [USAGE]).run_once() == 3
    await log.close()
    _delete_log(tmp_path)  # e.g. to reclaim the space
    fresh = EventLogFile(path)  # offsets start at 1 again, below the projected position
    await fresh.append(USAGE, entries([consumed("new-1"), consumed("new-2")]))
    assert await LogTailer(fresh, store, [USAGE]).run_once() == 2
    latest = await store.latest(Scope.everyone(), "openai", 10)
    assert sorted(f.event_id for f in latest) == ["new-1", "new-2", "old-0", "old-1", "old-2"]
    assert await store.position(USAGE) == 2
    await fresh.close()


async def test_poison_is_recorded_with_its_reason_and_skipped(
    tmp_path: Path, store: SqliteUsageStore
) -> None:
    log = EventLogFile(tmp_path / "events.sqlite")
    no_id = consumed("")
    granted = EventEnvelope(event_id="g1")  # an event analytics ignores
    granted.tokens_granted.user_id = "alice"
    await log.append(USAGE, entries([consumed("ok-1")]))
    await log.append(USAGE, [Entry("k", "junk", b"\xff\xff\xff")])
    await log.append(USAGE, entries([no_id, granted, consumed("ok-2")]))
    registry = CollectorRegistry()
    tailer = LogTailer(log, store, [USAGE], metrics=ProjectionMetrics(registry))
    assert await tailer.run_once() == 5
    records = await log.read(USAGE, 0, 10)
    dead = await store.dead_letters()
    assert [(d.offset, d.reason.split(":")[0]) for d in dead] == [
        (records[1].seq, "not an EventEnvelope"),
        (records[2].seq, "event_id is empty"),
    ]
    assert dead[0] == DeadLetter(USAGE, 0, records[1].seq, dead[0].reason, b"\xff\xff\xff")
    assert [f.event_id for f in await store.latest(Scope.everyone(), "openai", 10)] == [
        "ok-2",
        "ok-1",
    ]
    assert await store.position(USAGE) == records[-1].seq
    assert registry.get_sample_value("leaky_analytics_dead_letters_total", {"topic": USAGE}) == 2
    assert await tailer.run_once() == 0  # skipped for good, recorded once
    assert len(await store.dead_letters()) == 2
    await log.close()


async def test_records_lost_to_retention_are_skipped_not_waited_for(
    tmp_path: Path, store: SqliteUsageStore
) -> None:
    log = EventLogFile(tmp_path / "events.sqlite", keep_rows=2)
    await written(log, 5)
    await log.prune()
    tailer = LogTailer(log, store, [USAGE])
    assert await tailer.run_once() == 2
    assert await store.raw_count() == 2
    await log.close()


async def test_expired_raw_events_are_deleted_and_rollups_kept(tmp_path: Path) -> None:
    clock = Clock()
    store = await open_sqlite_usage_store(
        f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", raw_ttl_seconds=60, now_ms=clock.now_ms
    )
    fact = UsageFact("x", T0, FactKind.CONSUME, "openai", "alice", "", 5, True)
    await store.project([SourcedFact(USAGE, 0, 1, fact)])
    assert await store.expire_raw() == 0
    clock.now += 60_000
    assert await store.expire_raw() == 1
    assert await store.latest(Scope.everyone(), "openai", 10) == []
    assert (await day_totals(store)).events == 1
    await store.close()


async def test_stop_without_start_and_twice_is_harmless(
    tmp_path: Path, store: SqliteUsageStore
) -> None:
    tailer = LogTailer(EventLogFile(tmp_path / "e.sqlite"), store, [USAGE])
    await tailer.stop()
    tailer.start()
    await asyncio.sleep(0)
    await tailer.stop()
    await tailer.stop()
    await tailer.log.close()


async def test_the_migrated_schema_is_the_one_the_store_declares(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from leaky_tokens.analytics.adapters.usage_schema import metadata

    store = await open_sqlite_usage_store(
        f"sqlite+aiosqlite:///{tmp_path / 'm.db'}", raw_ttl_seconds=60
    )

    def diff(conn: object) -> list[object]:
        context = MigrationContext.configure(conn)  # type: ignore[arg-type]
        changes = compare_metadata(context, metadata)
        # Indexes live in the migration only (the tables' declarations do not repeat them);
        # the version table is Alembic's.
        return [
            c
            for c in changes
            if not (isinstance(c, tuple) and c[0] in ("remove_index", "remove_table"))
            or (c[0] == "remove_table" and c[1].name != "analytics_alembic_version")
        ]

    async with store._engine.connect() as conn:
        assert await conn.run_sync(diff) == []
    await store.close()


async def _tail_child(log: Path, db: Path) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.tail_child", str(log), str(db),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None
    assert await child.stdout.readline() == b"tailing\n"
    return child


async def _until_past(store: SqliteUsageStore, position: int) -> None:
    """Wait (up to a minute) until the projection's position in USAGE passes position."""

    async def past() -> bool:
        return await store.position(USAGE) > position

    await eventually(past, 60, what=f"the projection passes position {position}")


async def test_a_tailer_killed_mid_stream_resumes_exactly_once(
    tmp_path: Path, store: SqliteUsageStore
) -> None:
    """The projecting process SIGKILLed three times, wherever it is, while the writer keeps
    appending (duplicates included): restarted, the projection ends with every event once."""
    log = EventLogFile(tmp_path / "events.sqlite")
    db = tmp_path / "analytics.db"
    child = await _tail_child(log.path, db)
    events = [consumed(f"k-{i}", user=f"u{i % 7}", tokens=i % 50) for i in range(1500)]
    kills: list[int] = []
    for i in range(0, len(events), 10):
        await log.append(USAGE, entries(events[i : i + 10]))
        if i % 50 == 0:
            await log.append(USAGE, entries(events[i : i + 10]))  # a relay retry
        if len(kills) < 3 and i in (300, 700, 1100):
            # Killed once it has projected more since the last kill, wherever it then is (on
            # a loaded machine the child may lag the writer by any amount: wait, never race).
            await _until_past(store, kills[-1] if kills else 0)
            child.kill()
            await child.wait()
            kills.append(await store.position(USAGE))
            if len(kills) < 3:
                child = await _tail_child(log.path, db)
    if child.returncode is None:
        child.kill()
        await child.wait()
    last = (await log.read(USAGE, 0, 10_000))[-1].seq
    assert len(kills) == 3
    assert 0 < kills[-1] < last  # it died with work left
    restarted = LogTailer(EventLogFile(log.path), store, [USAGE], batch=20)
    await restarted.run_once()
    assert await store.position(USAGE) == last
    assert await store.raw_count() == len(events)
    assert await day_totals(store) == expected(events)
    await restarted.log.close()
    await log.close()


async def test_the_lag_gauge_follows_a_draining_backlog(
    tmp_path: Path, store: SqliteUsageStore
) -> None:
    clock = Clock()
    log = EventLogFile(tmp_path / "events.sqlite", now_ms=clock.now_ms)
    for at, name in ((0, "a"), (3_000, "b"), (5_000, "c")):
        clock.now = T0 + at
        await log.append(USAGE, entries([consumed(f"{name}{i}") for i in range(10)]))
    registry = CollectorRegistry()
    seen: list[float | None] = []

    class Watching(FlakyStore):
        async def apply(self, *args: object, **kwargs: object) -> None:
            seen.append(
                registry.get_sample_value(
                    "leaky_analytics_projection_lag_seconds", {"topic": USAGE}
                )
            )
            await super().apply(*args, **kwargs)

    tailer = LogTailer(
        log, Watching(store, fail_on=0), [USAGE], batch=10, metrics=ProjectionMetrics(registry)
    )
    assert await tailer.run_once() == 30
    # Before each batch: nothing measured yet, then 2 s behind (b's time to c's), then 0.
    assert seen == [None, 2.0, 0.0]
    assert (
        registry.get_sample_value("leaky_analytics_projection_lag_seconds", {"topic": USAGE}) == 0
    )
    await log.close()
