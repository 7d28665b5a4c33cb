"""The Cassandra usage store on the stack's real node: exact and idempotent under at-least-once
delivery (duplicates, replays, crashes between cell and raw writes, owner changes), raw events
that survive the same millisecond and expire by TTL, and a clear error when Cassandra is away."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import RoundRobinPolicy

from leaky_tokens.analytics.adapters.cassandra_usage_store import (
    PARTITION_KEY,
    CassandraUsageStore,
)
from leaky_tokens.analytics.domain.facts import (
    FactKind,
    PurchaseFact,
    PurchaseState,
    SourcedFact,
    UsageFact,
)
from leaky_tokens.analytics.domain.ports import (
    Scope,
    ScopeKind,
    UsageStoreUnavailableError,
    scopes_of,
)
from leaky_tokens.analytics.domain.totals import Totals
from leaky_tokens.analytics.domain.windows import DAY_MS, RESOLUTIONS, Resolution
from leaky_tokens.stack.orchestrator import Stack
from tests.support.cassandra_store import (
    cassandra_port,
    cassandra_store,
    drop_keyspace,
    new_keyspace,
    store_settings,
)
from tests.support.net import free_port

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000 + 23 * 3_600_000  # 2026-01-01T23:00Z: facts span midnight
TOPIC = "leaky.usage.v1"
USERS = [f"user-{n}" for n in range(7)]
ORGS = ["", "", "org-a", "org-b"]
PROVIDERS = ["openai", "qwen"]
KINDS = [FactKind.CONSUME] * 6 + [FactKind.RESERVE] * 2 + [FactKind.REFUND, FactKind.SETTLE]


@pytest.fixture(scope="module")
def port(stack: Stack) -> int:
    return cassandra_port(stack)


@pytest.fixture
async def store(port: int) -> AsyncIterator[CassandraUsageStore]:
    async with cassandra_store(port) as opened:
        yield opened


@pytest.fixture(scope="module")
def cql(port: int) -> Iterator[Session]:
    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy())
    cluster = Cluster(
        ["127.0.0.1"],
        port=port,
        protocol_version=5,
        connect_timeout=10,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )
    try:
        yield cluster.connect()
    finally:
        cluster.shutdown()


def make_facts(n: int, seed: int) -> list[UsageFact]:
    """n distinct facts over ~2 hours around midnight; some share a millisecond."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    facts = []
    at = T0
    for i in range(n):
        at += rng.choice((0, 0, 1, 7_000, 40_000))  # same ms, next ms, seconds, a minute
        kind = rng.choice(KINDS)
        facts.append(
            UsageFact(
                event_id=f"ev-{seed}-{i:05d}",
                occurred_at_ms=at,
                kind=kind,
                provider=rng.choice(PROVIDERS),
                user_id=rng.choice(USERS),
                org_id=rng.choice(ORGS),
                tokens=rng.randint(0, 500),
                allowed=kind.is_decision and rng.random() < 0.7,
            )
        )
    return facts


def deliveries(facts: Sequence[UsageFact], partitions: int, seed: int) -> list[list[SourcedFact]]:
    """Per partition, at-least-once delivery: each fact at one offset, ~15% of them relayed
    again at a later offset (some in the same batch), cut into uneven batches."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    logs: list[list[UsageFact]] = [[] for _ in range(partitions)]
    for fact in facts:  # keyed like the relay: the same key, so the same partition
        logs[USERS.index(fact.user_id) % partitions].append(fact)
    for log in logs:
        for fact in rng.sample(log, k=len(log) * 15 // 100):  # relayed again, soon after
            at = log.index(fact) + rng.randint(1, 80)
            log.insert(min(at, len(log)), fact)
        for fact in rng.sample(log, k=min(5, len(log))):  # and much later
            log.append(fact)
    batches: list[list[SourcedFact]] = []
    for partition, log in enumerate(logs):
        sourced = [SourcedFact(TOPIC, partition, offset, f) for offset, f in enumerate(log)]
        i = 0
        while i < len(sourced):
            size = rng.randint(1, 60)
            batches.append(sourced[i : i + size])
            i += size
    return batches


def expected_buckets(
    facts: Sequence[UsageFact],
) -> dict[tuple[Scope, str, Resolution], dict[int, Totals]]:
    """Brute force: every bucket of every scope, provider and resolution, by Totals.of."""
    grouped: dict[tuple[Scope, str, Resolution], dict[int, list[UsageFact]]] = {}
    for fact in facts:
        for scope in scopes_of(fact):
            for resolution in RESOLUTIONS:
                key = (scope, fact.provider, resolution)
                bucket = resolution.floor(fact.occurred_at_ms)
                grouped.setdefault(key, {}).setdefault(bucket, []).append(fact)
    return {
        key: {bucket: Totals.of(group) for bucket, group in buckets.items()}
        for key, buckets in grouped.items()
    }


async def assert_exact(store: CassandraUsageStore, facts: Sequence[UsageFact]) -> None:
    for (scope, provider, resolution), want in expected_buckets(facts).items():
        empty = min(want) - resolution.value  # a bucket without usage is absent
        got = await store.buckets(scope, provider, resolution, [*sorted(want), empty])
        assert dict(got) == want, (scope, provider, resolution)


def raw_count(cql: Session, keyspace: str, scope: Scope, provider: str, days: set[int]) -> int:
    return sum(
        cql.execute(
            f"SELECT COUNT(*) FROM {keyspace}.usage_raw WHERE scope_kind = %s AND scope_id = %s"
            " AND provider = %s AND day = %s",
            (scope.kind.value, scope.id, provider, day),
        ).one()[0]
        for day in days
    )


async def test_duplicates_replays_and_crashes_give_exact_totals_and_n_raw_rows(
    store: CassandraUsageStore, port: int, cql: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    facts = make_facts(1_200, seed=1)
    batches = deliveries(facts, partitions=3, seed=2)
    keyspace = store._keyspace
    crash_at = {
        len(batches) // 4: "cell_write",
        len(batches) // 2: "recent_insert",
        3 * len(batches) // 4: "raw_insert",
    }
    current = store
    for number, batch in enumerate(batches):
        if number in crash_at:
            await crash_half_way(current, batch, crash_at[number], monkeypatch)
            # The process "dies": a new instance (a new writer) replays from an older offset.
            await current.close()
            current = CassandraUsageStore(store_settings(port, keyspace))
            await current.start()
            for replayed in batches[max(0, number - 5) : number + 1]:
                await current.project(replayed)
            continue
        await current.project(batch)
        if number % 10 == 3:  # a plain replay of what was just applied
            await current.project(batch)
    try:
        await assert_exact(current, facts)
        days = {fact.occurred_at_ms - fact.occurred_at_ms % DAY_MS for fact in facts}
        for provider in PROVIDERS:
            assert raw_count(cql, keyspace, Scope.everyone(), provider, days) == sum(
                1 for f in facts if f.provider == provider
            )
            for user in USERS:  # every decision once, from the usage_recent chunks
                mine = sorted(
                    (f for f in facts if f.provider == provider and f.user_id == user),
                    key=lambda f: (f.occurred_at_ms, f.event_id),
                    reverse=True,
                )
                want = [f for f in mine if f.kind.is_decision]
                assert await current.latest(Scope(ScopeKind.USER, user), provider, 500) == want
                assert await current.latest(Scope(ScopeKind.USER, user), provider, 7) == want[:7]
        decisions = sorted(
            (f for f in facts if f.provider == "openai" and f.kind.is_decision),
            key=lambda f: (f.occurred_at_ms, f.event_id),
            reverse=True,
        )
        assert await current.latest(Scope.everyone(), "openai", 40) == decisions[:40]
        org = [f for f in decisions if f.org_id == "org-a"]
        assert await current.latest(Scope(ScopeKind.ORG, "org-a"), "openai", 500) == org
        assert await current.providers(Scope.everyone()) == sorted(PROVIDERS)
    finally:
        if current is not store:
            await current.close()


async def crash_half_way(
    store: CassandraUsageStore,
    batch: list[SourcedFact],
    statement: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Project `batch` but fail once half of the writes of the phase with `statement` (all
    of its rows of that statement first, the phase's others after) are done."""
    real = store._write_all

    async def failing(writes: list[tuple[str, tuple[Any, ...], int]]) -> None:
        if any(name == statement for name, _, _ in writes):
            ours = [write for write in writes if write[0] == statement]
            others = [write for write in writes if write[0] != statement]
            await real((ours + others)[: len(ours) // 2])
            raise UsageStoreUnavailableError("injected crash")
        await real(writes)

    monkeypatch.setattr(store, "_write_all", failing)
    with pytest.raises(UsageStoreUnavailableError, match="injected"):
        await store.project(batch)
    monkeypatch.setattr(store, "_write_all", real)


async def test_a_failed_call_repeated_on_the_same_instance_completes(
    store: CassandraUsageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    facts = make_facts(200, seed=3)
    batch = [SourcedFact(TOPIC, 0, offset, fact) for offset, fact in enumerate(facts)]
    await crash_half_way(store, batch, "raw_insert", monkeypatch)
    await store.project(batch)
    await store.project(batch[50:])
    await assert_exact(store, facts)


async def test_a_replay_cut_differently_after_a_crash_counts_each_fact_once(
    store: CassandraUsageStore, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a crash half-way through the cell writes, the replay's call spans facts already
    counted, half-written and new ones, so one minute's facts are partly below and partly above
    a cell's applied offset: those cells take them one by one, not as the minute's sum."""
    facts = make_facts(400, seed=5)
    batch = [SourcedFact(TOPIC, 0, offset, fact) for offset, fact in enumerate(facts)]
    await store.project(batch[:100])
    await crash_half_way(store, batch[100:200], "cell_write", monkeypatch)
    fresh = CassandraUsageStore(store_settings(port, store._keyspace))
    await fresh.start()
    try:
        await fresh.project(batch[50:300])
        await fresh.project(batch[250:])
        await assert_exact(fresh, facts)
    finally:
        await fresh.close()


SAMPLES: dict[str, tuple[Any, ...]] = {
    "varchar": ("", "user-é-𝄞", "x" * 300),
    "bigint": (0, -(2**63), 2**63 - 1, 1_767_225_600_000),
    "int": (0, -(2**31), 2**31 - 1, 604_800),
    "boolean": (True, False, 1, 0),
    "blob": (b"", b"\x00\xff" * 40),
}


async def test_row_binders_serialize_every_write_statement_as_the_driver_binds(
    store: CassandraUsageStore,
) -> None:
    rng = random.Random(7)  # noqa: S311 - test data
    assert set(store._binders) == set(PARTITION_KEY)
    for name, binder in store._binders.items():
        prepared = store._prepared[name]
        types = [column.type.typename for column in prepared.column_metadata]
        assert set(types) <= set(SAMPLES), (name, types)
        for _ in range(20):
            params = tuple(rng.choice(SAMPLES[t]) for t in types)
            assert binder.values(params) == prepared.bind(params).values, (name, params)
            # Nulls where the schema allows them (not in the primary key).
            holes = tuple(
                None if i >= PARTITION_KEY[name] + 2 and rng.random() < 0.5 else value
                for i, value in enumerate(params)
            )
            assert binder.values(holes) == prepared.bind(holes).values, (name, holes)
    raw = store._binders["raw_insert"]
    good = next(iter(SAMPLES["varchar"]))
    with pytest.raises(TypeError, match="column day"):
        raw.values((good, good, good, "not a number", *[0] * 9))
    with pytest.raises(ValueError, match="2 values for 13 columns"):
        raw.values((good, good))


async def test_events_in_the_same_millisecond_both_survive(store: CassandraUsageStore) -> None:
    same = [
        UsageFact(f"e{n}", T0, FactKind.CONSUME, "openai", "u", "", 10 + n, True) for n in range(3)
    ]
    await store.project([SourcedFact(TOPIC, 0, n, f) for n, f in enumerate(same)])
    assert await store.latest(Scope.everyone(), "openai", 10) == same[::-1]
    (totals,) = (await store.buckets(Scope.everyone(), "openai", Resolution.MINUTE, [T0])).values()
    assert (totals.events, totals.tokens) == (3, 33)


async def test_raw_rows_carry_the_ttl_from_settings(port: int, cql: Session) -> None:
    async with cassandra_store(port, cassandra_raw_ttl_days=3) as store:
        fact = UsageFact("e1", T0, FactKind.CONSUME, "openai", "u", "org", 5, True)
        await store.project([SourcedFact(TOPIC, 0, 0, fact)])
        rows = list(
            cql.execute(
                f"SELECT scope_kind, TTL(tokens) FROM {store._keyspace}.usage_raw ALLOW FILTERING"
            )
        )
        rows += cql.execute(
            f"SELECT scope_kind, TTL(facts) FROM {store._keyspace}.usage_recent ALLOW FILTERING"
        )
    assert sorted(kind for kind, _ in rows) == ["all", "org", "user"]
    for _, ttl in rows:
        assert 3 * 86_400 - 600 < ttl <= 3 * 86_400


async def test_two_instances_owning_different_partitions_and_a_handover(port: int) -> None:
    facts = make_facts(600, seed=4)
    keyspace = new_keyspace()
    first = CassandraUsageStore(store_settings(port, keyspace))
    second = CassandraUsageStore(store_settings(port, keyspace))
    try:
        await first.start()
        await second.start()
        p0 = [SourcedFact(TOPIC, 0, n, f) for n, f in enumerate(facts[0::2])]
        p1 = [SourcedFact(TOPIC, 1, n, f) for n, f in enumerate(facts[1::2])]
        third = len(p0) // 3
        # Concurrently: first owns partition 0, second owns partition 1.
        await asyncio.gather(first.project(p0[:third]), second.project(p1))
        # A rebalance hands partition 0 to second (from the committed offset), then back to
        # first, whose cache is now stale: it must notice and re-read.
        await second.project(p0[third : 2 * third])
        await first.project(p0[2 * third :])
        await assert_exact(first, facts)
        await assert_exact(second, facts)
    finally:
        await first.close()
        await second.close()
        await asyncio.to_thread(drop_keyspace, port, keyspace)


async def test_purchases_keep_each_sagas_latest_state(store: CassandraUsageStore) -> None:
    def step(n: int, saga: str, at: int, state: PurchaseState) -> SourcedFact:
        fact = PurchaseFact(f"p{n}", at, saga, "u1", "org", "openai", 100, state)
        return SourcedFact("leaky.purchase.v1", 0, n, fact)

    started, done = (
        step(1, "s1", T0, PurchaseState.STARTED),
        step(2, "s1", T0 + 9, PurchaseState.COMPLETED),
    )
    late = step(3, "s1", T0 + 20, PurchaseState.PAYMENT_RESERVED)  # after terminal: ignored
    failed = step(4, "s2", T0 + 50, PurchaseState.FAILED)
    await store.project([done, late])
    await store.project([started, done, failed, started])
    views = await store.purchases(Scope(ScopeKind.USER, "u1"), 10)
    assert [(v.saga_id, v.state, v.created_at_ms) for v in views] == [
        ("s2", PurchaseState.FAILED, T0 + 50),
        ("s1", PurchaseState.COMPLETED, T0),
    ]
    totals = await store.purchase_totals(Scope(ScopeKind.ORG, "org"))
    assert (totals.completed_purchases, totals.completed_tokens, totals.failed_purchases) == (
        1,
        100,
        1,
    )
    assert await store.purchases(Scope(ScopeKind.USER, "other"), 10) == []


async def test_unreachable_cassandra_is_unavailable_and_recovers(port: int) -> None:
    proxy = TcpProxy(port)
    await proxy.start()
    keyspace = new_keyspace()
    store = CassandraUsageStore(
        store_settings(proxy.port, keyspace, cassandra_request_timeout_ms=2_000)
    )
    fact = UsageFact("e1", T0, FactKind.CONSUME, "openai", "u", "", 5, True)
    try:
        await proxy.stop()
        with pytest.raises(UsageStoreUnavailableError, match="cassandra"):
            await store.start()
        await proxy.start()
        await store.start()
        await store.project([SourcedFact(TOPIC, 0, 0, fact)])
        await proxy.stop()
        with pytest.raises(UsageStoreUnavailableError):
            await store.project([SourcedFact(TOPIC, 0, 1, fact)])
        await proxy.start()
        await wait_recovered(store, fact)
        got = await store.buckets(Scope.everyone(), "openai", Resolution.MINUTE, [T0])
        assert got[T0].events == 1
    finally:
        await store.close()
        await proxy.stop()
        await asyncio.to_thread(drop_keyspace, port, keyspace)


async def wait_recovered(store: CassandraUsageStore, fact: UsageFact) -> None:
    """Retry the projection as the projection loop does, until Cassandra answers again."""
    for _ in range(300):
        try:
            await store.project([SourcedFact(TOPIC, 0, 1, fact)])
            return
        except UsageStoreUnavailableError:
            await asyncio.sleep(0.1)
    raise AssertionError("the store did not recover")


class TcpProxy:
    """A loopback TCP proxy to the CQL port that can cut every connection."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_a_bucket_with_only_a_zero_token_give_back_is_present(
    store: CassandraUsageStore,
) -> None:
    give_back = UsageFact("r1", T0, FactKind.RELEASE, "openai", "u", "", 0, False)
    await store.project([SourcedFact(TOPIC, 0, 0, give_back)])
    got = await store.buckets(Scope(ScopeKind.USER, "u"), "openai", Resolution.HOUR, [T0])
    assert dict(got) == {T0: Totals.of([give_back])}
    assert await store.latest(Scope.everyone(), "openai", 5) == []


async def test_latest_still_reads_the_user_and_org_copies_of_older_versions(
    store: CassandraUsageStore, cql: Session
) -> None:
    # Before usage_recent (ADR 0045) a user's or org's decisions were raw rows of their own:
    # until those expire, latest() merges them with the new rows.
    old = UsageFact("old-1", T0, FactKind.CONSUME, "openai", "u", "org", 5, True)
    new = UsageFact("new-1", T0 + 1_000, FactKind.CONSUME, "openai", "u", "org", 6, False)
    for kind, scope_id in (("user", "u"), ("org", "org")):
        cql.execute(
            f"INSERT INTO {store._keyspace}.usage_raw (scope_kind, scope_id, provider, day,"
            " occurred_at, event_id, kind, decision, user_id, org_id, tokens, allowed)"
            " VALUES (%s, %s, 'openai', %s, %s, 'old-1', 'consume', true, 'u', 'org', 5, true)",
            (kind, scope_id, T0 - T0 % DAY_MS, T0),
        )
    await store.project([SourcedFact(TOPIC, 0, 0, new)])  # also lists the day, as before
    assert await store.latest(Scope(ScopeKind.USER, "u"), "openai", 10) == [new, old]
    assert await store.latest(Scope(ScopeKind.ORG, "org"), "openai", 1) == [new]
    assert await store.latest(Scope(ScopeKind.ORG, "org"), "openai", 2) == [new, old]
