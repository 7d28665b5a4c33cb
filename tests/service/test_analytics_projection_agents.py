"""The projection's Faust agents under Faust's test context (no Kafka): batches reach the
store as SourcedFacts, poison goes to the dead-letter sink with its reason, a store outage
is retried until it ends with nothing acked meanwhile, and no message is acked before
`project` returned for it. The store is tests/support's honest double (dedup by event id)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import pytest
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry

from leaky.events.v1.events_pb2 import EventEnvelope, PurchaseCompleted, TokensGranted
from leaky_tokens.analytics.adapters.dead_letters import (
    REASON,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
    DeadLetter,
)
from leaky_tokens.analytics.adapters.faust_projection import (
    FaustConfig,
    ProjectionWatch,
    Projector,
    build_app,
)
from leaky_tokens.analytics.adapters.projection_metrics import ProjectionMetrics
from leaky_tokens.analytics.adapters.projection_settings import ProjectionSettings
from leaky_tokens.analytics.domain.facts import FactKind, PurchaseFact, PurchaseState, UsageFact
from leaky_tokens.analytics.projection_worker import (
    STORES,
    open_store,
    stalled_gauge,
    store_factory,
)
from leaky_tokens.runtime.faust_worker import (
    NOT_SERVING,
    SERVING,
    ConsumerState,
    HealthReporter,
    verdict,
)
from leaky_tokens.runtime.settings import SettingsError
from tests.support.usage_store_double import RecordingUsageStore
from tests.support.wait import eventually

USAGE, PURCHASE = "leaky.usage.test", "leaky.purchase.test"
STORES_MODULE = "leaky_tokens.analytics.projection_worker"
WAIT = 10.0  # a bound on waiting, never asserted on
NOW_S = 1_800_000_000.0  # the projector's injected clock


@dataclass
class RecordingDeadLetters:
    letters: list[DeadLetter] = field(default_factory=list)
    down: bool = False
    attempts: int = 0

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        self.attempts += 1
        if self.down:
            raise ConnectionError("dead-letter topic unreachable")
        self.letters.extend(letters)

    async def close(self) -> None:
        pass


@dataclass
class Rig:
    app: faust.App
    store: RecordingUsageStore
    dead: RecordingDeadLetters
    watch: ProjectionWatch
    registry: CollectorRegistry

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def agent(self, topic: str) -> Any:
        return self.app.agents[f"analytics-project-{topic}"]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    registry = CollectorRegistry()
    store, dead, watch = RecordingUsageStore(), RecordingDeadLetters(), ProjectionWatch()
    metrics = ProjectionMetrics(registry)
    projector = Projector(
        store, dead, metrics, watch, backoff_s=0.005, backoff_max_s=0.02, clock=lambda: NOW_S
    )
    config = FaustConfig(
        group="projection-test", bootstrap="127.0.0.1:1", topics=(USAGE, PURCHASE),
        datadir=tmp_path, batch_size=4, batch_window_s=0.02, commit_interval_s=1.0,
        session_timeout_s=10.0,
    )  # fmt: skip
    app = build_app(config, projector)
    yield Rig(app, store, dead, watch, registry)
    # Acking made the app create its Kafka consumer, whose thread service owns an event
    # loop of its own that only starting and stopping it would close: never started here.
    consumer = app._consumer
    if consumer is not None:
        consumer._thread.thread_loop.close()  # type: ignore[attr-defined]


@pytest.fixture
async def usage(rig: Rig) -> AsyncIterator[Any]:
    async with rig.agent(USAGE).test_context() as agent:
        yield agent


def consumed(
    event_id: str, *, user: str = "u1", tokens: int = 10, allowed: bool = True, at_ms: int = 0
) -> bytes:
    envelope = EventEnvelope(event_id=event_id)
    envelope.occurred_at.FromMilliseconds(at_ms or int(NOW_S * 1000) - 2_500)
    body = envelope.token_usage_recorded
    body.user_id, body.provider, body.tokens, body.allowed = user, "openai", tokens, allowed
    return envelope.SerializeToString()


async def put(agent: Any, value: bytes, partition: int = 0) -> faust.EventT[Any]:
    event: faust.EventT[Any] = await agent.put(value, partition=partition, wait=False)
    return event


def acked(events: Sequence[faust.EventT[Any]]) -> list[bool]:
    return [bool(e.message.acked) for e in events]


async def test_batches_reach_the_store_as_sourced_facts_and_are_acked_after(
    rig: Rig, usage: Any
) -> None:
    events = [await put(usage, consumed(f"e{i}"), partition=i % 2) for i in range(6)]

    await eventually(lambda: all(acked(events)), WAIT, what="all acked")
    assert sorted(rig.store.applied) == [f"e{i}" for i in range(6)]
    e3 = rig.store.applied["e3"]
    assert (e3.topic, e3.partition, e3.offset) == (USAGE, 1, 3)
    assert e3.fact == UsageFact("e3", int(NOW_S * 1000) - 2_500, FactKind.CONSUME, "openai",
                                "u1", "", 10, True)  # fmt: skip
    assert all(1 <= len(call) <= 4 for call in rig.store.calls)  # batches, at most batch_size
    assert rig.metric("leaky_analytics_projected_facts_total", topic=USAGE) == 6
    assert rig.metric("leaky_analytics_projection_lag_seconds", topic=USAGE) == pytest.approx(2.5)
    assert rig.metric("leaky_analytics_projection_stalled") == 0


async def test_a_duplicate_event_id_at_another_offset_is_applied_once(rig: Rig, usage: Any) -> None:
    events = [await put(usage, consumed("same", tokens=7)) for _ in range(3)]
    events.append(await put(usage, consumed("other")))

    await eventually(lambda: all(acked(events)), WAIT, what="all acked")
    assert sorted(rig.store.applied) == ["other", "same"]
    assert rig.store.applied["same"].offset == 0  # the first copy; the others changed nothing


async def test_poison_goes_to_the_dead_letter_topic_with_its_reason_and_the_rest_goes_on(
    rig: Rig, usage: Any
) -> None:
    no_id = EventEnvelope()
    no_id.token_usage_recorded.user_id = "u1"
    headers = {"traceparent": b"00-abc-def-01"}
    garbage = await usage.put(b"\xff\x00 not protobuf", partition=1, headers=headers, wait=False)
    missing = await put(usage, no_id.SerializeToString(), partition=0)
    good = await put(usage, consumed("fine"), partition=0)

    await eventually(lambda: all(acked([garbage, missing, good])), WAIT, what="all acked")
    assert list(rig.store.applied) == ["fine"]
    by_offset = {letter.offset: letter for letter in rig.dead.letters}
    assert sorted(by_offset) == [0, 1]
    first = by_offset[0]
    assert first.value == b"\xff\x00 not protobuf"
    assert first.reason.startswith("not an EventEnvelope")
    header = dict(first.all_headers())
    assert header["traceparent"] == b"00-abc-def-01"
    assert header[SOURCE_TOPIC] == USAGE.encode()
    assert (header[SOURCE_PARTITION], header[SOURCE_OFFSET]) == (b"1", b"0")
    assert header[REASON] == first.reason.encode()
    assert by_offset[1].reason == "event_id is empty"
    assert rig.metric("leaky_analytics_dead_letters_total", topic=USAGE) == 2


async def test_events_analytics_ignores_are_acked_without_a_fact(rig: Rig, usage: Any) -> None:
    grant = EventEnvelope(event_id="g1", tokens_granted=TokensGranted(user_id="u1"))
    event = await put(usage, grant.SerializeToString())

    await eventually(lambda: all(acked([event])), WAIT, what="acked")
    assert rig.store.calls == []
    assert rig.dead.letters == []


async def test_a_store_outage_is_retried_with_nothing_acked_until_it_ends(
    rig: Rig, usage: Any
) -> None:
    rig.store.down = True
    events = [await put(usage, consumed(f"o{i}")) for i in range(3)]

    await eventually(lambda: rig.store.failures >= 3, WAIT, what="retried")
    assert acked(events) == [False, False, False]
    assert rig.store.applied == {}
    assert rig.metric("leaky_analytics_projection_stalled") == 1
    running = ConsumerState(running=True, joined=True, rebalancing=False)
    reason = verdict(running, rig.watch, 0.0, stuck_after_s=3600)
    assert "UsageStoreUnavailableError" in reason  # NOT_SERVING at once, not after an hour

    rig.store.down = False
    await eventually(lambda: all(acked(events)), WAIT, what="acked after the outage")
    assert sorted(rig.store.applied) == ["o0", "o1", "o2"]
    assert all(call == rig.store.calls[0] for call in rig.store.calls)  # the same batch again
    assert rig.metric("leaky_analytics_projection_stalled") == 0
    assert verdict(running, rig.watch, 0.0, stuck_after_s=3600) == ""


async def test_a_dead_letter_outage_holds_the_batch_like_a_store_outage(
    rig: Rig, usage: Any
) -> None:
    rig.dead.down = True
    events = [await put(usage, consumed("ok")), await put(usage, b"\xff")]

    await eventually(lambda: rig.dead.attempts >= 3, WAIT, what="retried")
    assert acked(events) == [False, False]
    rig.dead.down = False
    await eventually(lambda: all(acked(events)), WAIT, what="acked")
    assert [letter.offset for letter in rig.dead.letters] == [1]


async def test_nothing_is_acked_before_project_returns(rig: Rig, usage: Any) -> None:
    rig.store.hold = asyncio.Event()
    events = [await put(usage, consumed(f"h{i}")) for i in range(2)]

    await eventually(rig.store.entered.is_set, WAIT, what="project called")
    for _ in range(20):  # let the agent run on, were it to ack early
        await asyncio.sleep(0)
    assert acked(events) == [False, False]
    running = ConsumerState(running=True, joined=True, rebalancing=False)
    assert verdict(running, rig.watch, 0.0, stuck_after_s=3600) == ""  # slow is not stalled
    assert "hangs" in verdict(running, rig.watch, 0.0, stuck_after_s=-1.0)

    rig.store.hold.set()
    await eventually(lambda: all(acked(events)), WAIT, what="acked once project returned")


async def test_while_a_batch_is_retried_the_next_one_waits_unacked(rig: Rig, usage: Any) -> None:
    rig.store.down = True
    first = [await put(usage, consumed(f"r{i}")) for i in range(4)]
    await eventually(lambda: rig.store.failures >= 1, WAIT, what="failed once")
    later = [await put(usage, consumed(f"s{i}")) for i in range(3)]
    await eventually(lambda: rig.store.failures >= 4, WAIT, what="retried")
    assert acked(first + later) == [False] * 7
    assert all(call == rig.store.calls[0] for call in rig.store.calls)  # never the next one

    rig.store.down = False
    await eventually(lambda: all(acked(first + later)), WAIT, what="acked after the outage")
    assert rig.store.most_running == 1
    assert sorted(rig.store.applied) == ["r0", "r1", "r2", "r3", "s0", "s1", "s2"]
    assert max(s.offset for s in rig.store.applied.values() if s.fact.event_id < "s") == 3


async def test_purchase_events_are_projected_from_the_purchase_topic(rig: Rig) -> None:
    envelope = EventEnvelope(event_id="p1")
    envelope.occurred_at.FromMilliseconds(1_700_000_000_000)
    envelope.purchase_completed.CopyFrom(
        PurchaseCompleted(saga_id="s1", user_id="u1", provider="openai", tokens=500)
    )
    async with rig.agent(PURCHASE).test_context() as purchase:
        event = await put(purchase, envelope.SerializeToString(), partition=2)
        await eventually(lambda: all(acked([event])), WAIT, what="acked")
    sourced = rig.store.applied["p1"]
    assert (sourced.topic, sourced.partition) == (PURCHASE, 2)
    assert isinstance(sourced.fact, PurchaseFact)
    assert sourced.fact.state is PurchaseState.COMPLETED
    assert rig.metric("leaky_analytics_projected_facts_total", topic=PURCHASE) == 1


def test_the_verdict_names_a_consumer_that_is_down_or_not_joined() -> None:
    watch = ProjectionWatch()
    down = ConsumerState(running=False, joined=True, rebalancing=False)
    assert verdict(down, watch, 0.0, 30.0) == "the Kafka consumer is not running"
    waiting = ConsumerState(running=True, joined=False, rebalancing=False)
    assert "not joined" in verdict(waiting, watch, 0.0, 30.0)
    long = ConsumerState(running=True, joined=True, rebalancing=True)
    assert verdict(long, watch, 10.0, 30.0) == ""
    assert "rebalancing" in verdict(long, watch, 31.0, 30.0)


async def test_an_agent_stopped_mid_batch_acks_none_of_it(rig: Rig) -> None:
    # A batch cut short (worker stopping, partition revoked) must come again from the
    # committed offset: Faust's take()/take_events() would ack it on the way out.
    rig.store.hold = asyncio.Event()
    async with rig.agent(USAGE).test_context() as usage:
        events = [await put(usage, consumed(f"c{i}")) for i in range(2)]
        await eventually(rig.store.entered.is_set, WAIT, what="project called")
    assert acked(events) == [False, False]
    assert rig.store.applied == {}


async def test_the_store_comes_from_store_factory_or_the_store_named() -> None:
    chosen = ProjectionSettings(
        store_factory="tests.support.usage_store_double:RecordingUsageStore"
    )
    assert isinstance(await open_store(store_factory(chosen)), RecordingUsageStore)
    with pytest.raises(SettingsError, match="STORE_FACTORY: cannot load"):
        store_factory(ProjectionSettings(store_factory="leaky_tokens.nowhere:open"))
    with pytest.raises(SettingsError, match="not callable"):
        store_factory(ProjectionSettings(store_factory=f"{STORES_MODULE}:ENV_PREFIX"))
    assert set(STORES) == {"cassandra", "sqlite"}  # what `store` may name


async def test_the_health_reporter_publishes_not_serving_and_the_stalled_gauge() -> None:
    servicer = health_aio.HealthServicer()
    state = ConsumerState(running=True, joined=True, rebalancing=False)
    registry = CollectorRegistry()
    metrics = ProjectionMetrics(registry)
    watch = ProjectionWatch()
    reporter = HealthReporter(
        servicer,
        lambda: state,
        watch,
        label="analytics projection",
        stuck_after_s=60,
        interval_s=1,
        observe=stalled_gauge(metrics, watch, 60),
    )

    async def status() -> int:
        reply = await servicer.Check(health_pb2.HealthCheckRequest(), None)
        return int(reply.status)

    assert await reporter.evaluate() == ""
    assert await status() == SERVING
    with watch.calling(USAGE, "store") as call:
        call.failures, call.error = 1, "UsageStoreUnavailableError: down"
        reason = await reporter.evaluate()
        assert reason == f"{USAGE}: the store call failed 1 time(s), last {call.error}"
        assert await status() == NOT_SERVING
        assert registry.get_sample_value("leaky_analytics_projection_stalled") == 1
    assert await reporter.evaluate() == ""
    assert await status() == SERVING
    assert registry.get_sample_value("leaky_analytics_projection_stalled") == 0
