"""Token metrics without a server: the top-N tenant sketch, deciding levels, relay backlog."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky_tokens.token.adapters.event_bus import PublishError
from leaky_tokens.token.adapters.event_relay import EventRelay, RelayMetrics
from leaky_tokens.token.adapters.in_memory_decision_store import InMemoryDecisionStore
from leaky_tokens.token.adapters.metered_store import MeteredDecisionStore, deciding_level
from leaky_tokens.token.adapters.tenant_usage import MAX_TOP_N, TRACKED_PER_SERIES, TenantUsage
from leaky_tokens.token.adapters.token_metrics import Operation, TokenMetrics
from leaky_tokens.token.domain.bucket import BucketLimit
from leaky_tokens.token.domain.decision import Level
from leaky_tokens.token.domain.policy import LevelLimits
from leaky_tokens.token.domain.ports import DecisionRequest, Subject
from leaky_tokens.token.domain.quota import QuotaLimit

T0 = 1_780_000_000_000
DAY = 86_400_000


def series(usage: TenantUsage) -> dict[str, dict[str, float]]:
    return {
        metric.name: {s.labels["tenant"]: s.value for s in metric.samples}
        for metric in usage.collect()
    }


def test_the_tenant_table_stays_bounded_and_keeps_the_heavy_tenant() -> None:
    usage = TenantUsage(2)
    for i in range(5_000):  # a heavy tenant among thousands of one-off ones
        usage.add(f"user:light-{i}", 1)
        if i % 10 == 0:
            usage.add("org:heavy", 20)
    assert usage.tracked <= 2 * TRACKED_PER_SERIES
    tokens = series(usage)["leaky_token_tenant_tokens"]
    assert len(tokens) == 3  # the top 2 and `other`, never more
    assert max(tokens, key=tokens.__getitem__) == "org:heavy"
    assert tokens["org:heavy"] >= 500 * 20  # space-saving never undercounts a tracked tenant
    assert sum(tokens.values()) == 5_000 + 500 * 20  # `other` makes up the total


def test_counts_are_exact_until_the_table_fills_then_say_their_error() -> None:
    usage = TenantUsage(1)
    for i in range(TRACKED_PER_SERIES):
        usage.add(f"user:{i}", 5)
    usage.add("user:0", 10)
    assert usage.top() == [("user:0", 15, 0)]
    usage.add("user:new", 100)  # the table is full: takes the smallest counter's place
    assert usage.top() == [("user:new", 105, 5)]
    assert usage.tracked == TRACKED_PER_SERIES


@pytest.mark.parametrize("top_n", [0, MAX_TOP_N + 1])
def test_top_n_outside_its_bound_is_refused(top_n: int) -> None:
    with pytest.raises(ValueError, match="top_n"):
        TenantUsage(top_n)


def limits(quota: int = 1000) -> LevelLimits:
    return LevelLimits(
        {Level.USER_BUCKET: BucketLimit.tokens(100, 1000)},
        {Level.USER_QUOTA: QuotaLimit(quota, T0, T0 + DAY)},
    )


async def test_the_deciding_level_is_the_refusing_one_or_the_tightest() -> None:
    store = InMemoryDecisionStore()
    alice = Subject("alice", "openai")
    tight_quota = await store.decide(DecisionRequest("d1", alice, limits(50), 40, T0))
    assert deciding_level(tight_quota.result) == "user_quota"  # 10 left vs the bucket's 60
    loose = await store.decide(DecisionRequest("d2", Subject("bob", "openai"), limits(), 40, T0))
    assert deciding_level(loose.result) == "user_bucket"
    over = await store.decide(DecisionRequest("d3", alice, limits(50), 20, T0))
    assert deciding_level(over.result) == "user_quota"


async def test_a_metered_store_is_the_store_with_every_call_counted() -> None:
    registry, metrics = CollectorRegistry(), TokenMetrics()
    for collector in metrics.collectors:
        registry.register(collector)
    inner = InMemoryDecisionStore()
    store = MeteredDecisionStore(inner, metrics)
    alice = Subject("alice", "openai")
    outcome = await store.decide(DecisionRequest("d1", alice, limits(), 30, T0))
    assert (await store.refund(alice, outcome.decision_id, 30, T0)).refunded == 30
    assert (await store.refund(alice, outcome.decision_id, 30, T0)).refunded == 0
    labels = {"rpc": "consume", "provider": "openai", "level": "all", "outcome": "refunded"}
    assert registry.get_sample_value("leaky_token_decisions_total", labels) == 1
    assert await store.read_events(0, "", 10) == await inner.read_events(0, "", 10)


class DownBus:
    def __init__(self) -> None:
        self.down = True

    async def publish(self, topic: str, batch: Sequence[EventEnvelope]) -> None:
        if self.down:
            raise PublishError("broker away")

    async def close(self) -> None:
        return None


async def test_the_relay_backlog_counts_beyond_one_batch() -> None:
    store, bus, metrics = InMemoryDecisionStore(), DownBus(), RelayMetrics(CollectorRegistry())
    for i in range(7):
        await store.credit_balance(Subject("alice", "openai"), Level.USER_QUOTA, 1, f"g{i}", T0)
    seen: list[float] = []

    async def sleep(_seconds: float) -> None:
        seen.append(metrics.pending._value.get())
        bus.down = len(seen) < 2

    relay = EventRelay(store, bus, "t", now_ms=lambda: T0, batch=3, metrics=metrics, sleep=sleep)
    assert await relay.relay_once() == 3
    assert seen == [7, 7]  # the whole backlog, not only the batch in hand
    assert metrics.pending._value.get() == 4
    assert await relay.relay_once() == 3
    assert await relay.relay_once() == 1
    assert metrics.pending._value.get() == 0


def test_hot_metrics_scrape_as_a_counter_and_a_cumulative_histogram() -> None:
    registry, metrics = CollectorRegistry(), TokenMetrics()
    for collector in metrics.collectors:
        registry.register(collector)
    for seconds in (0.0001, 0.001, 0.003, 2.0):  # 0.001 sits on a bound: le is inclusive
        metrics.latency[Operation.DECIDE].observe(seconds)
    metrics.decision("consume", "openai", "user_bucket", "allowed").inc(3)
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    hist = {
        (s.name, s.labels.get("le")): s.value
        for s in families["leaky_token_store_latency_seconds"].samples
        if s.labels["operation"] == "decide"
    }
    bucket = "leaky_token_store_latency_seconds_bucket"
    assert hist[(bucket, "0.0005")] == 1
    assert hist[(bucket, "0.001")] == 2
    assert hist[(bucket, "0.005")] == 3
    assert hist[(bucket, "1.0")] == 3
    assert hist[(bucket, "+Inf")] == 4
    assert hist[("leaky_token_store_latency_seconds_count", None)] == 4
    assert hist[("leaky_token_store_latency_seconds_sum", None)] == pytest.approx(2.0041)
    labels = {"rpc": "consume", "provider": "openai", "level": "user_bucket", "outcome": "allowed"}
    assert registry.get_sample_value("leaky_token_decisions_total", labels) == 3
