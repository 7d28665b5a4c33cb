"""The UsageStore contract, over every adapter of tests/support/usage_stores.py: rollups equal
the brute-force Totals of their facts, duplicates and replays change nothing, purchases keep
their latest state with terminal states final."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Iterable, Sequence

import pytest

from leaky_tokens.analytics.domain.facts import (
    FactKind,
    PurchaseFact,
    PurchaseState,
    SourcedFact,
    UsageFact,
)
from leaky_tokens.analytics.domain.ports import (
    PurchaseTotals,
    Scope,
    ScopeKind,
    UsageStore,
    scopes_of,
)
from leaky_tokens.analytics.domain.totals import Totals
from leaky_tokens.analytics.domain.windows import DAY_MS, HOUR_MS, MINUTE_MS, RESOLUTIONS
from tests.support.cassandra_store import cassandra_port, cassandra_store
from tests.support.usage_stores import USAGE_STORES, StoreFactory

T0 = 1_780_000_000_000 - 1_780_000_000_000 % DAY_MS  # a UTC midnight
USAGE, PURCHASE = "leaky.usage.v1", "leaky.purchase.v1"
_offsets = itertools.count(1)


@pytest.fixture(params=[*sorted(USAGE_STORES), "cassandra"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[UsageStore]:
    if request.param == "cassandra":  # the stack's real Cassandra, a fresh keyspace per test
        port = cassandra_port(request.getfixturevalue("stack"))
        async with cassandra_store(port) as opened:
            yield opened
        return
    factory: StoreFactory = USAGE_STORES[request.param]
    async with factory() as fresh:
        yield fresh


def usage(
    event_id: str,
    at: int,
    *,
    kind: FactKind = FactKind.CONSUME,
    provider: str = "openai",
    user: str = "alice",
    org: str = "",
    tokens: int = 10,
    allowed: bool = True,
) -> UsageFact:
    return UsageFact(event_id, at, kind, provider, user, org, tokens, allowed and kind.is_decision)


def sourced(facts: Iterable[UsageFact | PurchaseFact], topic: str = USAGE) -> list[SourcedFact]:
    return [SourcedFact(topic, 0, next(_offsets), f) for f in facts]


def in_scope(fact: UsageFact, scope: Scope) -> bool:
    return scope in scopes_of(fact)


async def assert_rollups_match(store: UsageStore, facts: Sequence[UsageFact]) -> None:
    """Every bucket of every scope, provider and resolution equals Totals.of its facts."""
    scopes = {s for f in facts for s in scopes_of(f)}
    providers = {f.provider for f in facts}
    for scope, provider, resolution in itertools.product(scopes, providers, RESOLUTIONS):
        mine = [f for f in facts if f.provider == provider and in_scope(f, scope)]
        expected: dict[int, list[UsageFact]] = {}
        for fact in mine:
            expected.setdefault(resolution.floor(fact.occurred_at_ms), []).append(fact)
        starts = [*sorted(expected), T0 - resolution.value]  # an empty bucket too
        got = await store.buckets(scope, provider, resolution, starts)
        assert set(got) == set(expected), (scope, provider, resolution)
        for start, bucket in expected.items():
            assert got[start] == Totals.of(bucket), (scope, provider, resolution, start)


def sample() -> list[UsageFact]:
    return [
        usage("e1", T0 + 1_000, tokens=10),
        usage("e2", T0 + 2_000, tokens=20, allowed=False),
        usage("e3", T0 + MINUTE_MS + 5, user="bob", org="acme", tokens=7),
        usage("e4", T0 + HOUR_MS + 5, kind=FactKind.RESERVE, org="acme", tokens=40),
        usage("e5", T0 + HOUR_MS + 6, kind=FactKind.SETTLE, org="acme", tokens=15),
        usage("e6", T0 + DAY_MS + 9, kind=FactKind.REFUND, user="bob", tokens=3),
        usage("e7", T0 + DAY_MS + 9, provider="anthropic", user="bob", org="acme", tokens=5),
    ]


async def test_projected_facts_roll_up_exactly_per_scope_and_resolution(store: UsageStore) -> None:
    facts = sample()
    await store.project(sourced(facts))
    await assert_rollups_match(store, facts)
    org = await store.buckets(Scope(ScopeKind.ORG, "acme"), "openai", RESOLUTIONS[2], [T0])
    assert org[T0].refunded_tokens == 15
    assert org[T0].events == 2
    assert org[T0].unique_users == 2


async def test_duplicates_and_replays_change_nothing(store: UsageStore) -> None:
    facts = sample()
    batch = sourced(facts)
    await store.project(batch)
    await store.project(batch)  # the same batch again (a replay from an older offset)
    await store.project(sourced(facts[:3]))  # the same event ids at other offsets
    dup_in_batch = sourced([facts[0], facts[0]])
    await store.project(dup_in_batch)
    await assert_rollups_match(store, facts)
    latest = await store.latest(Scope.everyone(), "openai", 100)
    assert sorted(f.event_id for f in latest) == ["e1", "e2", "e3", "e4"]


async def test_two_events_in_the_same_millisecond_are_both_kept(store: UsageStore) -> None:
    facts = [usage("a", T0 + 5), usage("b", T0 + 5)]
    await store.project(sourced(facts))
    assert [f.event_id for f in await store.latest(Scope.everyone(), "openai", 10)] == ["b", "a"]
    got = await store.buckets(Scope.everyone(), "openai", RESOLUTIONS[0], [T0])
    assert got[T0].events == 2


async def test_latest_is_newest_first_limited_scoped_and_decisions_only(store: UsageStore) -> None:
    facts = [
        usage("x1", T0 + 10, user="alice"),
        usage("x2", T0 + 30, user="bob", org="acme"),
        usage("x3", T0 + 20, user="alice", org="acme", kind=FactKind.RESERVE),
        usage("x4", T0 + 40, user="alice", kind=FactKind.REFUND),
        usage("x5", T0 + 50, user="alice", provider="anthropic"),
    ]
    await store.project(sourced(facts))
    everyone = await store.latest(Scope.everyone(), "openai", 10)
    assert [f.event_id for f in everyone] == ["x2", "x3", "x1"]
    assert [f.event_id for f in await store.latest(Scope.everyone(), "openai", 2)] == ["x2", "x3"]
    alice = await store.latest(Scope(ScopeKind.USER, "alice"), "openai", 10)
    assert [f.event_id for f in alice] == ["x3", "x1"]
    acme = await store.latest(Scope(ScopeKind.ORG, "acme"), "openai", 10)
    assert [f.event_id for f in acme] == ["x2", "x3"]
    assert acme[1] == facts[2]  # every field survives the round trip


async def test_providers_are_those_with_usage_in_the_scope(store: UsageStore) -> None:
    await store.project(sourced(sample()))
    assert await store.providers(Scope.everyone()) == ["anthropic", "openai"]
    assert await store.providers(Scope(ScopeKind.USER, "alice")) == ["openai"]
    assert await store.providers(Scope(ScopeKind.ORG, "acme")) == ["anthropic", "openai"]
    assert await store.providers(Scope(ScopeKind.USER, "nobody")) == []


def step(
    saga: str, state: PurchaseState, at: int, *, user: str = "alice", org: str = "", n: int = 0
) -> PurchaseFact:
    reason = "card declined" if state is PurchaseState.FAILED else ""
    return PurchaseFact(
        f"{saga}-{state.value}-{n}", at, saga, user, org, "openai", 100, state, reason
    )


async def test_purchases_keep_their_latest_state_and_terminal_states_are_final(
    store: UsageStore,
) -> None:
    s = PurchaseState
    done = [
        step("p1", s.STARTED, T0 + 1),
        step("p1", s.PAYMENT_RESERVED, T0 + 2),
        step("p1", s.TOKENS_ALLOCATED, T0 + 3),
        step("p1", s.PAYMENT_CAPTURED, T0 + 4),
        step("p1", s.COMPLETED, T0 + 5),
    ]
    # Out of order and duplicated: the completion first, the start last.
    await store.project(sourced([done[4], done[2], done[2], done[1]], PURCHASE))
    await store.project(sourced([done[3], done[0], done[4]], PURCHASE))
    failed = [
        step("p2", s.STARTED, T0 + 10, org="acme"),
        step("p2", s.COMPENSATING, T0 + 11, org="acme"),
        step("p2", s.FAILED, T0 + 12, org="acme"),
        step("p2", s.PAYMENT_RESERVED, T0 + 13, org="acme"),  # a late step after the end
    ]
    await store.project(sourced(failed, PURCHASE))
    await store.project(sourced([step("p3", s.PAYMENT_RESERVED, T0 + 21, user="bob")], PURCHASE))
    await store.project(sourced([step("p3", s.STARTED, T0 + 20, user="bob")], PURCHASE))

    views = await store.purchases(Scope.everyone(), 10)
    assert [(v.saga_id, v.state) for v in views] == [
        ("p3", s.PAYMENT_RESERVED),
        ("p2", s.FAILED),
        ("p1", s.COMPLETED),
    ]
    p3, p2, p1 = views
    assert (p1.created_at_ms, p1.updated_at_ms) == (T0 + 1, T0 + 5)
    assert (p2.reason, p2.org_id, p2.tokens) == ("card declined", "acme", 100)
    assert (p3.created_at_ms, p3.updated_at_ms, p3.user_id) == (T0 + 20, T0 + 21, "bob")
    assert [v.saga_id for v in await store.purchases(Scope.everyone(), 2)] == ["p3", "p2"]
    alice = await store.purchases(Scope(ScopeKind.USER, "alice"), 10)
    assert [v.saga_id for v in alice] == ["p2", "p1"]
    assert [v.saga_id for v in await store.purchases(Scope(ScopeKind.ORG, "acme"), 10)] == ["p2"]

    assert await store.purchase_totals(Scope.everyone()) == PurchaseTotals(1, 100, 1)
    assert await store.purchase_totals(Scope(ScopeKind.USER, "bob")) == PurchaseTotals(0, 0, 0)
    assert await store.purchase_totals(Scope(ScopeKind.ORG, "acme")) == PurchaseTotals(0, 0, 1)


async def test_random_facts_with_duplicates_match_brute_force(store: UsageStore) -> None:
    rng = random.Random(9)  # noqa: S311 - reproducible test data, not secrets
    kinds = list(FactKind)
    facts = [
        usage(
            f"r{i}",
            T0 + rng.randrange(3 * DAY_MS),
            kind=rng.choice(kinds),
            provider=rng.choice(["openai", "anthropic", "mistral"]),
            user=f"u{rng.randrange(12)}",
            org=rng.choice(["", "", "acme", "globex"]),
            tokens=rng.randrange(0, 500),
            allowed=rng.random() < 0.8,
        )
        for i in range(3000)
    ]
    deliveries = facts + rng.sample(facts, 600)  # at-least-once: some twice
    rng.shuffle(deliveries)
    for i in range(0, len(deliveries), 250):
        await store.project(sourced(deliveries[i : i + 250]))
    await assert_rollups_match(store, facts)
    # A whole day window of one scope, split as the reports do: equal to the brute force.
    alice = Scope(ScopeKind.USER, "u3")
    days = await store.buckets(alice, "openai", RESOLUTIONS[2], [T0, T0 + DAY_MS])
    merged = Totals()
    for bucket in days.values():
        merged.merge(bucket)
    mine = [f for f in facts if f.provider == "openai" and f.user_id == "u3"]
    assert merged == Totals.of(f for f in mine if f.occurred_at_ms < T0 + 2 * DAY_MS)
    newest = sorted(
        (f for f in facts if f.provider == "mistral" and f.kind.is_decision),
        key=lambda f: (f.occurred_at_ms, f.event_id),
        reverse=True,
    )[:25]
    assert await store.latest(Scope.everyone(), "mistral", 25) == newest


async def test_purchases_created_in_the_same_millisecond_come_by_saga_id_descending(
    store: UsageStore,
) -> None:
    s = PurchaseState
    await store.project(
        sourced([step(saga, s.STARTED, T0 + 7) for saga in ("pa", "pc", "pb")], PURCHASE)
    )
    assert [v.saga_id for v in await store.purchases(Scope.everyone(), 10)] == ["pc", "pb", "pa"]
    assert [v.saga_id for v in await store.purchases(Scope.everyone(), 2)] == ["pc", "pb"]
