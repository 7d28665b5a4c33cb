"""The DecisionStore contract, run against the in-memory store, a single real Redis (over the
fast wire and over redis-py) and a real 3-node Redis Cluster: all must decide, refund, reserve
and record events alike."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from leaky.token.v1 import limits_pb2
from leaky_tokens.stack.orchestrator import Stack
from leaky_tokens.stack.redis import Redis as RedisComponent
from leaky_tokens.token.adapters import event_codec as codec
from leaky_tokens.token.adapters.in_memory_decision_store import InMemoryDecisionStore
from leaky_tokens.token.adapters.key_layout import KeyLayout
from leaky_tokens.token.adapters.redis_decision_store import RedisDecisionStore
from leaky_tokens.token.adapters.redis_wire import Endpoint, RedisWire
from leaky_tokens.token.adapters.resilient_decision_store import ResilientDecisionStore
from leaky_tokens.token.adapters.settings import FailureMode
from leaky_tokens.token.domain import decision as dec
from leaky_tokens.token.domain.bucket import BucketLimit
from leaky_tokens.token.domain.decision import Allowed, Denied, Level, Reason
from leaky_tokens.token.domain.policy import LevelLimits
from leaky_tokens.token.domain.ports import (
    DecisionRequest,
    DecisionStore,
    EventKind,
    IdempotencyKeyReusedError,
    ReservationIdTakenError,
    ReserveRequest,
    StoreUnavailableError,
    Subject,
    UsageEvent,
)
from leaky_tokens.token.domain.quota import QuotaLimit
from leaky_tokens.token.domain.reservation import ReservationStatus, Reserved
from leaky_tokens.token.domain.units import TOKEN_SCALE
from tests.support import token_hammer as hammer
from tests.support.net import free_port
from tests.support.redis_cluster import redis_cluster
from tests.support.stack import component

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]  # the subprocess imports tests.support from here

T0 = 1_780_000_000_000  # epoch ms; every clock reading is explicit
DAY = 86_400_000
WINDOW = (T0 - T0 % DAY, T0 - T0 % DAY + DAY)
ALICE = Subject("alice", "openai")
ALICE_IN_ACME = Subject("alice", "openai", "acme")
BOB_IN_ACME = Subject("bob", "openai", "acme")


def limits(
    user_cap: int = 100, org_cap: int | None = None, user_quota: int | None = None
) -> LevelLimits:
    """Buckets leaking 1 token/s (1000 milli-tokens per s); quotas in today's window."""
    buckets = {Level.USER_BUCKET: BucketLimit.tokens(user_cap, 1000)}
    if org_cap is not None:
        buckets[Level.ORG_BUCKET] = BucketLimit.tokens(org_cap, 1000)
    quotas = {}
    if user_quota is not None:
        quotas[Level.USER_QUOTA] = QuotaLimit(user_quota, *WINDOW)
    return LevelLimits(buckets, quotas)


def ask(
    subject: Subject, lim: LevelLimits, tokens: int, now: int, key: str | None = None
) -> DecisionRequest:
    return DecisionRequest(uuid.uuid4().hex, subject, lim, tokens, now, key)


@pytest.fixture(scope="session")
def cluster_ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as ports:
        yield ports


@pytest.fixture(params=["memory", "wire", "redis", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[DecisionStore]:
    if request.param == "memory":
        yield InMemoryDecisionStore()
        return
    client: Redis | RedisCluster
    wire = None
    if request.param in ("wire", "redis"):
        stack: Stack = request.getfixturevalue("stack")
        redis = component(stack, "redis")
        assert isinstance(redis, RedisComponent)
        client = Redis(host="127.0.0.1", port=redis.port)
        if request.param == "wire":  # the single-Redis default: scripts over RedisWire
            wire = RedisWire(Endpoint(port=redis.port), timeout_s=5.0, connect_timeout_s=5.0)
    else:
        ports: list[int] = request.getfixturevalue("cluster_ports")
        client = RedisCluster(host="127.0.0.1", port=ports[0])
    # A prefix of its own: the stack's Redis is shared, so no test flushes it.
    prefix = f"t{uuid.uuid4().hex[:10]}"
    real = RedisDecisionStore(client, KeyLayout(prefix=prefix, shards=8), wire=wire)
    await real.load_scripts()
    yield real
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        await client.delete(key)
    await real.close()


async def events_of(store: DecisionStore, tenant: str) -> list[UsageEvent]:
    found = []
    for shard in range(store.shard_count):
        found += [e.event for e in await store.read_events(shard, "", 10_000)]
    return [e for e in found if e.tenant == tenant]


async def remaining(
    store: DecisionStore, subject: Subject, lim: LevelLimits, now: int
) -> dict[Level, int]:
    snap = await store.read(subject, lim, now)
    return {lv: dec.bucket_status(lv, s).remaining for lv, s in snap.buckets.items()}


async def test_every_level_or_none_is_debited(store: DecisionStore) -> None:
    lim = limits(user_cap=100, org_cap=50)
    first = await store.decide(ask(ALICE_IN_ACME, lim, 40, T0))
    assert isinstance(first.result, Allowed)
    assert first.result.debit.buckets == {
        Level.USER_BUCKET: 40_000_000,
        Level.ORG_BUCKET: 40_000_000,
    }
    second = await store.decide(ask(ALICE_IN_ACME, lim, 20, T0))
    assert isinstance(second.result, Denied)
    assert (second.result.level, second.result.reason) == (Level.ORG_BUCKET, Reason.RATE_LIMITED)
    assert second.result.retry_after_ms == 10_000  # 10 tokens at 1 token/s
    # The user bucket had room, yet the denial took nothing from it.
    assert await remaining(store, ALICE_IN_ACME, lim, T0) == {
        Level.USER_BUCKET: 60,
        Level.ORG_BUCKET: 10,
    }
    too_big = await store.decide(ask(ALICE_IN_ACME, lim, 101, T0))
    assert isinstance(too_big.result, Denied)
    assert too_big.result.reason is Reason.REQUEST_EXCEEDS_CAPACITY
    assert too_big.result.retry_after_ms is None


async def test_the_org_bucket_is_shared_by_its_members(store: DecisionStore) -> None:
    lim = limits(user_cap=100, org_cap=50)
    assert isinstance((await store.decide(ask(ALICE_IN_ACME, lim, 30, T0))).result, Allowed)
    bob = await store.decide(ask(BOB_IN_ACME, lim, 30, T0))
    assert isinstance(bob.result, Denied)
    assert bob.result.level is Level.ORG_BUCKET
    later = await store.decide(ask(BOB_IN_ACME, lim, 30, T0 + 10_000))  # 10 tokens leaked
    assert isinstance(later.result, Allowed)


async def test_an_idempotency_key_replays_the_first_outcome(store: DecisionStore) -> None:
    lim = limits(user_cap=100)
    first = await store.decide(ask(ALICE, lim, 30, T0, key="k-1"))
    again = await store.decide(ask(ALICE, lim, 30, T0 + 5, key="k-1"))
    assert again.replayed
    assert not first.replayed
    assert again.decision_id == first.decision_id
    assert again.result == first.result
    assert await remaining(store, ALICE, lim, T0) == {Level.USER_BUCKET: 70}
    other = await store.decide(ask(Subject("carol", "openai"), lim, 30, T0, key="k-1"))
    assert not other.replayed  # keys are per user
    kinds = [e.kind for e in await events_of(store, ALICE.tenant)]
    assert kinds == [EventKind.ALLOWED]


async def test_a_refund_gives_the_debit_back_once(store: DecisionStore) -> None:
    lim = limits(user_cap=100, org_cap=80, user_quota=1000)
    made = await store.decide(ask(ALICE_IN_ACME, lim, 60, T0))
    assert isinstance(made.result, Allowed)
    back = await store.refund(ALICE_IN_ACME, made.decision_id, 60, T0, "provider call failed")
    assert (back.refunded, back.changed) == (60, True)
    assert await remaining(store, ALICE_IN_ACME, lim, T0) == {
        Level.USER_BUCKET: 100,
        Level.ORG_BUCKET: 80,
    }
    quota_state = (await store.read(ALICE_IN_ACME, lim, T0)).quotas[Level.USER_QUOTA].state
    assert quota_state.used == 0
    twice = await store.refund(ALICE_IN_ACME, made.decision_id, 60, T0)
    assert (twice.refunded, twice.changed) == (0, False)
    stranger = await store.refund(BOB_IN_ACME, made.decision_id, 60, T0)
    assert not stranger.changed
    events = await events_of(store, ALICE_IN_ACME.tenant)
    assert [(e.kind, e.reason) for e in events] == [
        (EventKind.ALLOWED, None),
        (EventKind.REFUNDED, "provider call failed"),
    ]


async def test_a_decision_kept_for_no_refund_cannot_be_refunded(store: DecisionStore) -> None:
    lim = limits(user_cap=100)
    req = ask(ALICE, lim, 60, T0)
    made = await store.decide(DecisionRequest(req.decision_id, ALICE, lim, 60, T0, None, False))
    assert isinstance(made.result, Allowed)
    back = await store.refund(ALICE, made.decision_id, 60, T0)
    assert (back.refunded, back.changed) == (0, False)
    assert await remaining(store, ALICE, lim, T0) == {Level.USER_BUCKET: 40}


async def test_a_refund_never_returns_what_already_leaked(store: DecisionStore) -> None:
    lim = limits(user_cap=100)
    made = await store.decide(ask(ALICE, lim, 60, T0))
    await store.refund(ALICE, made.decision_id, 60, T0 + 30_000)  # 30 leaked meanwhile
    snap = await store.read(ALICE, lim, T0 + 30_000)
    assert snap.buckets[Level.USER_BUCKET].state.level == 0


async def test_reserve_settle_and_release_are_idempotent(store: DecisionStore) -> None:
    lim = limits(user_cap=100, user_quota=1000)
    req = ReserveRequest("res-1", ALICE, lim, 50, T0, ttl_ms=60_000, idempotency_key="r-key")
    held = await store.reserve(req)
    assert isinstance(held.result, Reserved)
    assert held.result.reservation.expires_at_ms == T0 + 60_000
    replay = await store.reserve(ReserveRequest("res-2", ALICE, lim, 50, T0, 60_000, "r-key"))
    assert replay.replayed
    assert replay.reservation_id == "res-1"
    assert await remaining(store, ALICE, lim, T0) == {Level.USER_BUCKET: 50}
    settled = await store.settle(ALICE, "res-1", 30, T0)
    assert settled is not None
    assert settled.changed
    assert settled.refunded == 20
    assert settled.reservation.status is ReservationStatus.SETTLED
    assert await remaining(store, ALICE, lim, T0) == {Level.USER_BUCKET: 70}
    again = await store.settle(ALICE, "res-1", 30, T0)
    assert again is not None
    assert not again.changed
    assert again.reservation.status is ReservationStatus.SETTLED
    assert again.reservation.actual == 30
    late = await store.release(ALICE, "res-1", T0)
    assert late is not None
    assert not late.changed
    assert await remaining(store, ALICE, lim, T0) == {Level.USER_BUCKET: 70}
    assert await store.settle(Subject("mallory", "openai"), "res-1", 0, T0) is None
    kinds = [e.kind for e in await events_of(store, ALICE.tenant)]
    assert kinds == [EventKind.RESERVED, EventKind.SETTLED]


async def test_a_denial_keeps_no_key_so_its_retry_is_decided_afresh(store: DecisionStore) -> None:
    lim = limits(user_cap=100)
    await store.decide(ask(ALICE, lim, 90, T0))
    denied = await store.decide(ask(ALICE, lim, 30, T0, key="k-d"))
    assert isinstance(denied.result, Denied)
    # The client waits as told and retries with the same key: decided now, not replayed.
    later = await store.decide(ask(ALICE, lim, 30, T0 + 20_000, key="k-d"))
    assert isinstance(later.result, Allowed)
    assert not later.replayed
    assert later.decision_id != denied.decision_id
    # Reserve alike: a denied estimate holds nothing and keeps no key.
    first = await store.reserve(ReserveRequest("res-d1", ALICE, lim, 80, T0, 60_000, "key-d"))
    assert isinstance(first.result, Denied)
    assert await store.settle(ALICE, "res-d1", 10, T0) is None  # a denial holds nothing
    again = await store.reserve(
        ReserveRequest("res-d2", ALICE, lim, 80, T0 + 200_000, 60_000, "key-d")
    )
    assert isinstance(again.result, Reserved)
    assert (again.reservation_id, again.replayed) == ("res-d2", False)
    replay = await store.reserve(
        ReserveRequest("res-d3", ALICE, lim, 80, T0 + 200_000, 60_000, "key-d")
    )
    assert (replay.reservation_id, replay.replayed) == ("res-d2", True)


async def test_a_refunded_consume_forgets_its_key(store: DecisionStore) -> None:
    lim = limits(user_cap=100)
    first = await store.decide(ask(ALICE, lim, 30, T0, key="k-r"))
    assert (await store.refund(ALICE, first.decision_id, 30, T0)).changed
    # The provider call failed, nothing was served: the retry is a new decision and debits.
    retry = await store.decide(ask(ALICE, lim, 30, T0, key="k-r"))
    assert isinstance(retry.result, Allowed)
    assert not retry.replayed
    assert retry.decision_id != first.decision_id
    assert await remaining(store, ALICE, lim, T0) == {Level.USER_BUCKET: 70}
    # ...and the key now names the retry: one more attempt replays it, debiting nothing.
    again = await store.decide(ask(ALICE, lim, 30, T0, key="k-r"))
    assert (again.decision_id, again.replayed) == (retry.decision_id, True)
    assert await remaining(store, ALICE, lim, T0) == {Level.USER_BUCKET: 70}
    # A second refund of the first decision changes nothing and forgets no other key.
    assert not (await store.refund(ALICE, first.decision_id, 30, T0)).changed
    assert (await store.decide(ask(ALICE, lim, 30, T0, key="k-r"))).replayed
    kinds = [e.kind for e in await events_of(store, ALICE.tenant)]
    assert kinds == [EventKind.ALLOWED, EventKind.REFUNDED, EventKind.ALLOWED]


async def test_a_key_reused_for_another_provider_or_size_is_refused(store: DecisionStore) -> None:
    lim = limits(user_cap=100)
    alice_qwen = Subject("alice", "qwen")
    await store.decide(ask(ALICE, lim, 30, T0, key="k-p"))
    with pytest.raises(IdempotencyKeyReusedError, match="provider 'openai', not 'qwen'"):
        await store.decide(ask(alice_qwen, lim, 30, T0, key="k-p"))
    with pytest.raises(IdempotencyKeyReusedError, match="tokens 30, not 31"):
        await store.decide(ask(ALICE, lim, 31, T0, key="k-p"))
    assert await remaining(store, alice_qwen, lim, T0) == {Level.USER_BUCKET: 100}
    assert await remaining(store, ALICE, lim, T0) == {Level.USER_BUCKET: 70}
    # Another tenant is another scope: the same key inside an org is a request of its own.
    inside = await store.decide(ask(ALICE_IN_ACME, lim, 30, T0, key="k-p"))
    assert isinstance(inside.result, Allowed)
    assert not inside.replayed
    await store.reserve(ReserveRequest("res-p1", ALICE, lim, 10, T0, 60_000, "r-p"))
    with pytest.raises(IdempotencyKeyReusedError, match="provider"):
        await store.reserve(ReserveRequest("res-p2", alice_qwen, lim, 10, T0, 60_000, "r-p"))
    with pytest.raises(IdempotencyKeyReusedError, match="tokens 10, not 11"):
        await store.reserve(ReserveRequest("res-p3", ALICE, lim, 11, T0, 60_000, "r-p"))
    assert await store.settle(alice_qwen, "res-p2", 0, T0) is None
    assert await remaining(store, alice_qwen, lim, T0) == {Level.USER_BUCKET: 100}


async def test_a_reservation_id_is_never_shared_between_subjects(store: DecisionStore) -> None:
    lim = limits(user_cap=100)
    await store.reserve(ReserveRequest("res-t", ALICE_IN_ACME, lim, 10, T0, 60_000))
    with pytest.raises(ReservationIdTakenError):
        await store.reserve(ReserveRequest("res-t", BOB_IN_ACME, lim, 10, T0, 60_000))
    assert await remaining(store, BOB_IN_ACME, lim, T0) == {Level.USER_BUCKET: 100}


async def test_a_settled_excess_is_charged_as_far_as_it_fits(store: DecisionStore) -> None:
    lim = limits(user_cap=100)
    await store.reserve(ReserveRequest("res-x", ALICE, lim, 80, T0, 60_000))
    settled = await store.settle(ALICE, "res-x", 130, T0)
    assert settled is not None
    assert settled.charged == 50
    assert settled.reservation.overage == {Level.USER_BUCKET: 30}
    assert await remaining(store, ALICE, lim, T0) == {Level.USER_BUCKET: 0}
    (event,) = [e for e in await events_of(store, ALICE.tenant) if e.kind is EventKind.SETTLED]
    assert event.tokens == 130
    assert event.overage == {Level.USER_BUCKET: 30}


async def test_release_gives_the_estimate_back(store: DecisionStore) -> None:
    lim = limits(user_cap=100)
    await store.reserve(ReserveRequest("res-r", ALICE, lim, 80, T0, 60_000))
    released = await store.release(ALICE, "res-r", T0)
    assert released is not None
    assert released.changed
    assert released.refunded == 80
    assert await remaining(store, ALICE, lim, T0) == {Level.USER_BUCKET: 100}


async def test_the_store_releases_expired_reservations_itself(store: DecisionStore) -> None:
    lim = limits(user_cap=100)
    await store.reserve(ReserveRequest("res-e", ALICE, lim, 90, T0, ttl_ms=1_000))
    assert await store.sweep_expired(T0 + 999) == 0
    assert await store.sweep_expired(T0 + 1_000) == 1
    assert await remaining(store, ALICE, lim, T0 + 1_000) == {Level.USER_BUCKET: 100}
    late = await store.settle(ALICE, "res-e", 90, T0 + 1_001)
    assert late is not None
    assert not late.changed
    assert late.reservation.status is ReservationStatus.RELEASED
    released = [e for e in await events_of(store, ALICE.tenant) if e.kind is EventKind.RELEASED]
    assert [(e.reason, e.tokens) for e in released] == [("expired", 90)]


async def test_any_later_call_of_the_tenant_sweeps_its_expired_reservations(
    store: DecisionStore,
) -> None:
    lim = limits(user_cap=100)
    await store.reserve(ReserveRequest("res-s", ALICE, lim, 90, T0, ttl_ms=1_000))
    # No sweeper ran: the next decision's own step releases the reservation first.
    made = await store.decide(ask(ALICE, lim, 50, T0 + 1_000))
    assert isinstance(made.result, Allowed)
    kinds = [e.kind for e in await events_of(store, ALICE.tenant)]
    assert kinds == [EventKind.RESERVED, EventKind.RELEASED, EventKind.ALLOWED]


async def test_events_are_recorded_once_per_decision_in_order(store: DecisionStore) -> None:
    lim = limits(user_cap=10)
    ids = []
    for tokens in (4, 4, 4):  # the third is denied
        ids.append((await store.decide(ask(ALICE, lim, tokens, T0))).decision_id)
    events = await events_of(store, ALICE.tenant)
    assert [(e.event_id, e.kind) for e in events] == [
        (ids[0], EventKind.ALLOWED),
        (ids[1], EventKind.ALLOWED),
        (ids[2], EventKind.DENIED),
    ]
    denied = events[2]
    assert denied.reason == "RATE_LIMITED"
    assert denied.levels == (Level.USER_BUCKET,)
    assert (denied.user_id, denied.provider, denied.tokens, denied.occurred_at_ms) == (
        "alice",
        "openai",
        4,
        T0,
    )
    # A relay acks what it forwarded; the rest stays.
    shards = [s for s in range(store.shard_count) if await store.read_events(s, "", 10)]
    assert len(shards) == 1  # one tenant, one shard
    shard = shards[0]
    logged = await store.read_events(shard, "", 10)
    assert await store.ack_events(shard, logged[1].position) == 2
    rest = await store.read_events(shard, "", 10)
    assert [e.event.event_id for e in rest] == [ids[2]]
    assert await store.read_events(shard, rest[0].position, 10) == []


async def test_pending_events_count_what_is_not_acknowledged(store: DecisionStore) -> None:
    lim = limits(user_cap=100)
    for _ in range(3):
        await store.decide(ask(ALICE, lim, 1, T0))
    count = getattr(store, "pending_events")  # noqa: B009 (not part of the port: ADR 0030)
    pending = {s: await count(s) for s in range(store.shard_count)}
    shard = next(s for s, n in pending.items() if n)
    assert pending == {s: 3 if s == shard else 0 for s in pending}
    logged = await store.read_events(shard, "", 10)
    await store.ack_events(shard, logged[1].position)
    assert await count(shard) == 1


async def test_a_credited_balance_is_spent_after_the_window(store: DecisionStore) -> None:
    lim = limits(user_cap=1000, user_quota=100)
    credited = await store.credit_balance(ALICE, Level.USER_QUOTA, 500, "grant-1", T0)
    assert (credited.balance, credited.changed) == (500, True)
    repeated = await store.credit_balance(ALICE, Level.USER_QUOTA, 500, "grant-1", T0)
    assert (repeated.balance, repeated.changed) == (500, False)
    made = await store.decide(ask(ALICE, lim, 150, T0))
    assert isinstance(made.result, Allowed)
    part = made.result.debit.quotas[Level.USER_QUOTA]
    assert (part.from_window, part.from_balance) == (100, 50)
    state = (await store.read(ALICE, lim, T0)).quotas[Level.USER_QUOTA].state
    assert (state.used, state.balance) == (100, 450)
    # A new window restores the allowance, never the spent balance.
    state = (await store.read(ALICE, lim, T0 + DAY)).quotas[Level.USER_QUOTA].state
    assert (state.used, state.balance) == (100, 450)  # read does not roll a foreign window
    out = await store.decide(ask(ALICE, lim, 451, T0))
    assert isinstance(out.result, Denied)
    assert out.result.reason is Reason.QUOTA_EXHAUSTED
    kinds = [e.kind for e in await events_of(store, ALICE.tenant)]
    assert kinds == [EventKind.CREDITED, EventKind.ALLOWED, EventKind.DENIED]


async def test_a_reverted_credit_is_taken_back_once(store: DecisionStore) -> None:
    lim = limits(user_cap=1000, user_quota=100)
    await store.credit_balance(ALICE, Level.USER_QUOTA, 500, "grant-r", T0)
    taken = await store.revert_credit(ALICE, Level.USER_QUOTA, "grant-r", T0, "capture failed")
    assert (taken.reverted, taken.balance, taken.changed) == (500, 0, True)
    again = await store.revert_credit(ALICE, Level.USER_QUOTA, "grant-r", T0 + 1)
    assert (again.reverted, again.balance, again.changed) == (500, 0, False)
    # The grant id stays spent: crediting it again adds nothing.
    late = await store.credit_balance(ALICE, Level.USER_QUOTA, 500, "grant-r", T0 + 2)
    assert (late.balance, late.changed) == (500, False)  # the grant's own answer
    assert (await store.read(ALICE, lim, T0)).quotas[Level.USER_QUOTA].state.balance == 0
    got = [e for e in await events_of(store, ALICE.tenant) if e.kind is EventKind.REVERTED]
    assert [(e.event_id, e.tokens, e.causation_id, e.reason) for e in got] == [
        ("grant-r:revert", 500, "grant-r", "capture failed")
    ]


async def test_a_revert_takes_at_most_the_balance_left_and_bars_an_unknown_grant(
    store: DecisionStore,
) -> None:
    lim = limits(user_cap=1000, user_quota=0)
    await store.credit_balance(ALICE, Level.USER_QUOTA, 300, "g-spent", T0)
    made = await store.decide(ask(ALICE, lim, 200, T0))  # spends 200 of it
    assert isinstance(made.result, Allowed)
    part = await store.revert_credit(ALICE, Level.USER_QUOTA, "g-spent", T0)
    assert (part.reverted, part.balance) == (100, 0)
    # A revert before its credit (a compensation racing a late step) takes nothing and
    # keeps the credit from ever landing; an org's balance alike.
    first = await store.revert_credit(ALICE_IN_ACME, Level.ORG_QUOTA, "g-never", T0)
    assert (first.reverted, first.changed) == (0, True)
    barred = await store.credit_balance(ALICE_IN_ACME, Level.ORG_QUOTA, 50, "g-never", T0)
    assert (barred.balance, barred.changed) == (0, False)
    org_lim = LevelLimits(
        {Level.USER_BUCKET: BucketLimit.tokens(1000, 1000)},
        {Level.ORG_QUOTA: QuotaLimit(0, *WINDOW)},
    )
    state = (await store.read(ALICE_IN_ACME, org_lim, T0)).quotas[Level.ORG_QUOTA].state
    assert state.balance == 0


async def test_every_decision_event_carries_its_detail(store: DecisionStore) -> None:
    lim = limits(user_cap=100, user_quota=1000)
    await store.credit_balance(ALICE, Level.USER_QUOTA, 5, "g-e", T0, "admin-1", "support")
    await store.decide(ask(ALICE, lim, 90, T0))
    denied = await store.decide(ask(ALICE, lim, 30, T0))
    held_back = await store.reserve(ReserveRequest("res-e0", ALICE, lim, 50, T0, 60_000))
    later = T0 + 100_000  # the bucket has drained
    await store.reserve(ReserveRequest("res-e1", ALICE, lim, 40, later, 60_000))
    await store.settle(ALICE, "res-e1", 60, later)
    assert isinstance(denied.result, Denied)
    assert isinstance(held_back.result, Denied)
    got = {e.event_id: e for e in await events_of(store, ALICE.tenant)}
    grant = got["g-e"]
    assert (grant.kind, grant.granted_by, grant.reason) == (
        EventKind.CREDITED,
        "admin-1",
        "support",
    )
    # A denial names every level checked, with limit and room, and the refusing ones.
    refused = got[denied.decision_id]
    assert refused.kind is EventKind.DENIED
    assert refused.statuses == denied.result.statuses
    assert [(s.level, s.limit, s.remaining) for s in refused.statuses] == [
        (Level.USER_BUCKET, 100, 10),
        (Level.USER_QUOTA, 1000, 915),  # window left plus the granted balance
    ]
    assert refused.limiting == (dec.Limiting(Level.USER_BUCKET, Reason.RATE_LIMITED, 20_000),)
    # A reserve denial is an event of its own kind, with the same detail.
    no_hold = got["res-e0"]
    assert (no_hold.kind, no_hold.reason) == (EventKind.RESERVE_DENIED, "RATE_LIMITED")
    assert no_hold.statuses == held_back.result.statuses
    assert no_hold.limiting == held_back.result.limiting
    assert got["res-e1"].expires_at_ms == later + 60_000
    settled = got["res-e1:settle"]
    assert (settled.estimate, settled.tokens) == (40, 60)
    # ...and all of it reaches the wire.
    wire = codec.envelope(settled).reservation_settled
    assert (wire.reserved_tokens, wire.actual_tokens, wire.charged_tokens) == (40, 60, 20)
    assert wire.refunded_tokens == 0
    assert [d.tokens for d in wire.debits] == [20, 20]
    usage = codec.envelope(refused).token_usage_recorded
    over = [s for s in usage.limits if s.code == limits_pb2.LIMIT_CODE_OVER_LIMIT]
    assert [(s.name, s.remaining, s.retry_after.seconds) for s in over] == [
        ("openai/user-bucket", 10, 20)
    ]
    reserved = codec.envelope(no_hold).tokens_reserved
    assert (reserved.allowed, reserved.reservation_id, reserved.decision_id) == (
        False,
        "",
        "res-e0",
    )
    assert len(reserved.limits) == 2
    granted = codec.envelope(grant).tokens_granted
    assert (granted.granted_by, granted.reason) == ("admin-1", "support")


@pytest.mark.parametrize("kind", ["wire", "redis", "cluster"])
async def test_many_deciders_in_two_processes_never_over_admit(
    request: pytest.FixtureRequest, kind: str
) -> None:
    if kind in ("wire", "redis"):
        redis = component(request.getfixturevalue("stack"), "redis")
        assert isinstance(redis, RedisComponent)
        port = redis.port
    else:
        port = request.getfixturevalue("cluster_ports")[0]
    prefix = f"t{uuid.uuid4().hex[:10]}"
    client = hammer.client_for(kind, port)
    layout = KeyLayout(prefix=prefix, shards=hammer.SHARDS)
    store = RedisDecisionStore(client, layout, wire=hammer.wire_for(kind, port))
    await store.load_scripts()
    other = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.token_hammer",
        kind,
        str(port),
        prefix,
        "32",
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        here = await hammer.hammer(store, tasks=32, lane=0)
        out, _ = await other.communicate()
        assert other.returncode == 0
        there = json.loads(out)
        per_user = {u: here.get(u, 0) + there.get(u, 0) for u in ("alice", "bob")}
        total = sum(per_user.values())
        span_s = (hammer.ROUNDS - 1) * hammer.STEP_MS / 1000 + (hammer.STEP_MS - 1) / 1000
        # Capacity plus what leaked over the span of clock readings, from the policy alone.
        assert total <= 1500 + 20 * span_s
        assert all(v <= 1000 + 10 * span_s for v in per_user.values())
        # ...and the org bucket did fill: the limit, not a failure, stopped the deciders.
        assert total >= 1500 - 1500 % hammer.TOKENS
        decisions = 64 * hammer.ROUNDS
        events = await events_of(store, "org:acme")
        assert len(events) == decisions == len({e.event_id for e in events})
        allowed = [e for e in events if e.kind is EventKind.ALLOWED]
        assert sum(e.tokens for e in allowed) == total
        assert store.batches_sent < 32 * hammer.ROUNDS  # concurrent calls shared pipelines
    finally:
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            await client.delete(key)
        await store.close()


def random_limits(rng: random.Random, now: int, org: bool) -> LevelLimits:
    """Small buckets that fill, and huge ones whose leak products pass 2**53 after a gap."""
    day = now - now % DAY

    def bucket() -> BucketLimit:
        if rng.random() < 0.3:
            return BucketLimit(9_000_000_000, 999_999_999, TOKEN_SCALE)  # level near 2**53
        return BucketLimit(rng.choice([5, 20, 100]), rng.choice([1, 7, 1000]), TOKEN_SCALE)

    buckets = {Level.USER_BUCKET: bucket()}
    quotas = {Level.USER_QUOTA: QuotaLimit(rng.choice([0, 50, 300]), day, day + DAY)}
    if org:
        buckets[Level.ORG_BUCKET] = bucket()
        quotas[Level.ORG_QUOTA] = QuotaLimit(rng.choice([100, 1000]), day, day + DAY)
    return LevelLimits(buckets, quotas)


async def outcome(call: Awaitable[object]) -> object:
    """The call's answer, or the message of the idempotency refusal it raised."""
    try:
        return await call
    except IdempotencyKeyReusedError as error:
        return str(error)


@pytest.mark.parametrize("store", ["wire", "redis", "cluster"], indirect=True)
async def test_the_lua_port_decides_exactly_as_the_domain(store: DecisionStore) -> None:
    """A seeded random run of every operation, clock jumps and going back included: the
    Redis scripts and the in-memory store (the domain functions) answer the same each step."""
    rng = random.Random(7)  # noqa: S311 - a reproducible test sequence, not a secret
    # The same shards as the fixture's Redis store: each call sweeps its own shard.
    reference = InMemoryDecisionStore(record_ttl_ms=10**13, layout=KeyLayout(shards=8))
    subjects = [ALICE, ALICE_IN_ACME, BOB_IN_ACME]
    now = T0
    decided: list[tuple[Subject, str]] = []
    reserved: list[tuple[Subject, str]] = []
    got: object
    want: object
    for step in range(400):
        now += rng.choice([0, 1, 250, 5_000, -3_000, 40_000, DAY, 400 * DAY])
        subject = rng.choice(subjects)
        lim = random_limits(rng, now, subject.org_id is not None)
        op = rng.choice(["decide", "decide", "reserve", "refund", "settle", "release", "credit"])
        tokens = rng.choice([0, 1, 3, 17, 60, 120, 5_000_000_000])
        if op == "decide":
            key = rng.choice([None, None, "again"])
            keep = rng.random() < 0.8
            req = DecisionRequest(f"d{step}", subject, lim, tokens, now, key, keep)
            got, want = await outcome(store.decide(req)), await outcome(reference.decide(req))
            decided.append((subject, f"d{step}"))
        elif op == "reserve":
            rreq = ReserveRequest(f"r{step}", subject, lim, tokens, now, rng.choice([1, 60_000]))
            got, want = await store.reserve(rreq), await reference.reserve(rreq)
            reserved.append((subject, f"r{step}"))
        elif op == "refund" and decided:
            who, did = rng.choice(decided)
            got, want = (
                await store.refund(who, did, tokens, now),
                await reference.refund(who, did, tokens, now),
            )
        elif op in ("settle", "release") and reserved:
            who, rid = rng.choice(reserved)
            if op == "settle":
                got, want = (
                    await store.settle(who, rid, tokens, now),
                    await reference.settle(who, rid, tokens, now),
                )
            else:
                got, want = (
                    await store.release(who, rid, now),
                    await reference.release(who, rid, now),
                )
        else:
            level = rng.choice(
                [Level.USER_QUOTA, Level.ORG_QUOTA] if subject.org_id else [Level.USER_QUOTA]
            )
            amount = rng.choice([1, 40, 1000])
            got, want = (
                await store.credit_balance(subject, level, amount, f"g{step}", now),
                await reference.credit_balance(subject, level, amount, f"g{step}", now),
            )
        assert got == want, f"step {step}: {op}: {got}\n!=\n{want}"
        assert await store.read(subject, lim, now) == await reference.read(subject, lim, now)
    for subject in subjects:
        # Whole events: a denial's statuses, estimates, deadlines alike in both.
        assert await events_of(store, subject.tenant) == await events_of(reference, subject.tenant)


async def test_scripts_flushed_from_the_servers_are_sent_again(cluster_ports: list[int]) -> None:
    client = RedisCluster(host="127.0.0.1", port=cluster_ports[0])
    real = RedisDecisionStore(client, KeyLayout(prefix=f"t{uuid.uuid4().hex[:10]}", shards=8))
    try:
        await client.script_flush()  # our own cluster: as after a restart or a failover
        made = await real.decide(ask(ALICE, limits(), 5, T0))
        assert isinstance(made.result, Allowed)
        again = await real.decide(ask(ALICE, limits(), 5, T0))  # now cached: EVALSHA hits
        assert await remaining(real, ALICE, limits(), T0) == {Level.USER_BUCKET: 90}
        assert isinstance(again.result, Allowed)
    finally:
        await real.close()


async def test_an_unreachable_redis_is_reported_as_unavailable() -> None:
    client = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    real = RedisDecisionStore(client)
    with pytest.raises(StoreUnavailableError):
        await real.decide(ask(ALICE, limits(), 5, T0))
    resilient = ResilientDecisionStore(
        real, FailureMode.LOCAL_EMERGENCY, timeout_s=1.0, recovery_s=60.0
    )
    made = await resilient.decide(ask(ALICE, limits(), 5, T0))
    assert isinstance(made.result, Allowed)
    assert resilient.degraded
    await real.close()
