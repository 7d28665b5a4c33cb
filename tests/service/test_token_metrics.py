"""The token service's metrics on the registry its server exports at /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest

from leaky.events.v1.events_pb2 import EventEnvelope
from leaky.token.v1 import token_pb2 as pb
from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2 as rpb
from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2_grpc
from leaky_tokens.runtime.settings import SettingsError
from leaky_tokens.token.adapters.event_bus import PublishError
from leaky_tokens.token.adapters.resilient_decision_store import ResilientDecisionStore
from leaky_tokens.token.adapters.settings import FailureMode
from leaky_tokens.token.adapters.tenant_usage import MAX_TOP_N
from leaky_tokens.token.bootstrap import TokenSettings
from tests.support.token_service import POLICY, TokenHarness, token_service
from tests.support.wait import eventually
from tests.unit.test_token_store_resilience import FakeMonotonic, FlakyStore

DECISIONS = "leaky_token_decisions_total"
# The harness policy plus Envoy descriptors: 2 requests a minute per user_id, and openai
# tokens charged to the user a provider/user_id descriptor names.
RLS_POLICY = (
    POLICY
    + """\
rate_limits:
  domain: leaky
  descriptors:
    - key: user_id
      rate_limit: {unit: minute, requests_per_unit: 2}
    - key: provider
      value: openai
      descriptors:
        - key: user_id
          token_bucket: openai
"""
)


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[TokenHarness]:
    async with token_service(tmp_path) as harness:
        yield harness


def consume(
    tokens: int, provider: str = "openai", user: str = "user-1", **extra: object
) -> pb.ConsumeRequest:
    return pb.ConsumeRequest(user_id=user, provider=provider, tokens=tokens, **extra)  # type: ignore[arg-type]


def decisions(h: TokenHarness, rpc: str, provider: str, level: str, outcome: str) -> float:
    labels = {"rpc": rpc, "provider": provider, "level": level, "outcome": outcome}
    return h.metrics.get_sample_value(DECISIONS, labels) or 0.0


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


async def test_each_consume_is_one_decision_by_provider_level_and_outcome(
    svc: TokenHarness,
) -> None:
    await svc.stub.Consume(consume(10), metadata=svc.auth())
    # The bucket (90 left of 100) is tighter than the day's quota (140 of 150).
    assert decisions(svc, "consume", "openai", "user_bucket", "allowed") == 1
    await svc.stub.Consume(consume(90), metadata=svc.auth())
    await refused(svc.stub.Consume(consume(5), metadata=svc.auth()))
    assert decisions(svc, "consume", "openai", "user_bucket", "allowed") == 2
    assert decisions(svc, "consume", "openai", "user_bucket", "denied") == 1
    # qwen's bucket holds 1000 but the day's quota only 150: the quota refuses.
    await refused(svc.stub.Consume(consume(151, "qwen"), metadata=svc.auth()))
    assert decisions(svc, "consume", "qwen", "user_quota", "denied") == 1
    latency = "leaky_token_store_latency_seconds_count"
    assert svc.sample(latency, operation="decide") == 4


async def test_a_replay_a_refund_and_a_purchased_balance_are_their_own_outcomes(
    svc: TokenHarness,
) -> None:
    await svc.stub.Consume(consume(10, idempotency_key="k1"), metadata=svc.auth())
    await svc.stub.Consume(consume(10, idempotency_key="k1"), metadata=svc.auth())
    assert decisions(svc, "consume", "openai", "user_bucket", "replayed") == 1
    svc.provider.fail = grpc.StatusCode.UNAVAILABLE
    await refused(svc.stub.Consume(consume(10), metadata=svc.auth()))
    assert decisions(svc, "consume", "openai", "all", "refunded") == 1
    svc.provider.fail = None
    # The day's 150 on qwen spent, a grant pays for the next one.
    await svc.stub.Consume(consume(150, "qwen"), metadata=svc.auth())
    grant = pb.GrantTokensRequest(
        user_id="user-1", provider="qwen", tokens=50, reason="purchase p-1"
    )
    await svc.stub.GrantTokens(grant, metadata=svc.auth("admin", "ADMIN"))
    await svc.stub.Consume(consume(20, "qwen"), metadata=svc.auth())
    assert decisions(svc, "consume", "qwen", "purchased", "allowed") == 1
    assert svc.sample("leaky_token_store_latency_seconds_count", operation="credit") == 1


async def test_reserve_settle_and_release_are_counted_under_their_rpc(svc: TokenHarness) -> None:
    held = await svc.stub.Reserve(
        pb.ReserveRequest(user_id="user-1", provider="openai", tokens=40), metadata=svc.auth()
    )
    rid = held.reservation.reservation_id
    settle = pb.SettleRequest(reservation_id=rid, actual_tokens=30)
    await svc.stub.Settle(settle, metadata=svc.auth())
    await svc.stub.Settle(settle, metadata=svc.auth())
    other = await svc.stub.Reserve(
        pb.ReserveRequest(user_id="user-1", provider="openai", tokens=5), metadata=svc.auth()
    )
    release = pb.ReleaseRequest(reservation_id=other.reservation.reservation_id)
    await svc.stub.Release(release, metadata=svc.auth())
    assert decisions(svc, "reserve", "openai", "user_bucket", "allowed") == 2
    assert decisions(svc, "settle", "openai", "all", "settled") == 1
    assert decisions(svc, "settle", "openai", "all", "replayed") == 1
    assert decisions(svc, "release", "openai", "all", "released") == 1


async def test_should_rate_limit_counts_descriptor_and_token_decisions(tmp_path: Path) -> None:
    async with token_service(tmp_path, policy=RLS_POLICY) as h:
        rls = rls_pb2_grpc.RateLimitServiceStub(h.channel)
        hit = rpb.RateLimitRequest(domain="leaky")
        hit.descriptors.add().entries.add(key="user_id", value="u1")
        codes = [(await rls.ShouldRateLimit(hit)).overall_code for _ in range(3)]
        assert codes == [rpb.RateLimitResponse.OK] * 2 + [rpb.RateLimitResponse.OVER_LIMIT]
        assert decisions(h, "should_rate_limit", "none", "descriptor", "allowed") == 2
        assert decisions(h, "should_rate_limit", "none", "descriptor", "denied") == 1
        assert h.sample("leaky_token_store_latency_seconds_count", operation="rls_hit") == 3
        tokens = rpb.RateLimitRequest(domain="leaky", hits_addend=30)
        entries = tokens.descriptors.add().entries
        entries.add(key="provider", value="openai")
        entries.add(key="user_id", value="u9")
        assert (await rls.ShouldRateLimit(tokens)).overall_code == rpb.RateLimitResponse.OK
        assert decisions(h, "should_rate_limit", "openai", "user_bucket", "allowed") == 1
        # Only token descriptors: no request counter was hit, so no descriptor decision.
        assert decisions(h, "should_rate_limit", "none", "descriptor", "allowed") == 2
        assert decisions(h, "consume", "openai", "user_bucket", "allowed") == 0


async def test_no_series_names_a_user_or_tenant_by_default(svc: TokenHarness) -> None:
    for user in ("alice-7", "bob-8"):
        await svc.stub.Consume(consume(10, user=user), metadata=svc.auth(user))
    assert decisions(svc, "consume", "openai", "user_bucket", "allowed") == 2
    labels = [s.labels for metric in svc.metrics.collect() for s in metric.samples]
    values = {value for found in labels for value in found.values()}
    names = {name for found in labels for name in found}
    assert not any("alice" in v or "bob" in v for v in values)
    assert not names & {"user", "user_id", "tenant", "org", "org_id"}
    assert svc.sample("leaky_token_tenant_tokens", tenant="other") is None


async def test_opted_in_tenant_usage_exports_only_the_top_n(tmp_path: Path) -> None:
    async with token_service(tmp_path, metrics_tenant_top_n=2) as h:
        for user, tokens in (("u-a", 30), ("u-b", 20), ("u-c", 10), ("u-d", 5)):
            await h.stub.Consume(consume(tokens, user=user), metadata=h.auth(user))
        tenants = {
            s.labels["tenant"]: s.value
            for metric in h.metrics.collect()
            for s in metric.samples
            if s.name == "leaky_token_tenant_tokens"
        }
        assert tenants == {"user:u-a": 30, "user:u-b": 20, "other": 15}
        assert h.sample("leaky_token_tenant_tokens_error", tenant="user:u-a") == 0


def test_the_tenant_bound_is_a_setting_with_a_ceiling() -> None:
    assert TokenSettings(metrics_tenant_top_n=MAX_TOP_N).metrics_tenant_top_n == MAX_TOP_N
    with pytest.raises(SettingsError, match="metrics_tenant_top_n"):
        TokenSettings(metrics_tenant_top_n=MAX_TOP_N + 1)
    with pytest.raises(SettingsError, match="metrics_tenant_top_n"):
        TokenSettings(metrics_tenant_top_n=-1)


async def test_the_degraded_gauge_is_1_while_the_store_is_down_and_0_after_recovery(
    tmp_path: Path,
) -> None:
    primary, clock = FlakyStore(), FakeMonotonic()
    store = ResilientDecisionStore(
        primary, FailureMode.LOCAL_EMERGENCY, timeout_s=1.0, recovery_s=1.0, monotonic=clock
    )
    async with token_service(tmp_path, store=store) as h:
        mode = "local_emergency"
        assert h.sample("leaky_token_store_degraded", mode=mode) == 0
        primary.state = "down"
        await h.stub.Consume(consume(5), metadata=h.auth())  # the local budget (10) admits it
        assert h.sample("leaky_token_store_degraded", mode=mode) == 1
        assert h.sample("leaky_token_store_degraded_transitions_total", to="degraded") == 1
        assert decisions(h, "consume", "openai", "user_bucket", "allowed") == 1
        primary.state = "up"
        clock.now += 1.0  # the next call probes the primary again
        await h.stub.Consume(consume(5), metadata=h.auth())
        assert h.sample("leaky_token_store_degraded", mode=mode) == 0
        assert h.sample("leaky_token_store_degraded_transitions_total", to="recovered") == 1


async def test_fail_closed_refusals_count_as_unavailable(tmp_path: Path) -> None:
    primary, clock = FlakyStore(), FakeMonotonic()
    store = ResilientDecisionStore(
        primary, FailureMode.FAIL_CLOSED, timeout_s=1.0, recovery_s=1.0, monotonic=clock
    )
    async with token_service(tmp_path, store=store) as h:
        primary.state = "down"
        error = await refused(h.stub.Consume(consume(5), metadata=h.auth()))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert decisions(h, "consume", "openai", "all", "unavailable") == 1
        assert h.sample("leaky_token_store_degraded", mode="fail_closed") == 1


class SwitchBus:
    """A bus that refuses every publish while `down`."""

    def __init__(self) -> None:
        self.down = False
        self.delivered: list[str] = []

    async def publish(self, topic: str, batch: Sequence[EventEnvelope]) -> None:
        if self.down:
            raise PublishError("broker away")
        self.delivered.extend(e.event_id for e in batch)

    async def close(self) -> None:
        return None


async def test_relay_lag_and_backlog_rise_while_the_bus_is_down_and_fall_back(
    tmp_path: Path,
) -> None:
    bus = SwitchBus()
    async with token_service(
        tmp_path, bus=bus, events_poll_ms=5, events_backoff_ms=5, events_backoff_max_ms=10
    ) as h:

        def gauge(name: str) -> float:
            return h.sample(f"leaky_token_events_relay_{name}") or 0.0

        bus.down = True
        await h.stub.Consume(consume(10), metadata=h.auth())
        await eventually(lambda: gauge("pending") == 1, 5, what="one event waits")
        h.clock.advance(seconds=30)
        await eventually(lambda: gauge("lag_seconds") >= 30, 5, what="the wait is 30 s old")
        await h.stub.Consume(consume(10), metadata=h.auth())
        await eventually(lambda: gauge("pending") == 2, 5, what="the backlog grows")
        assert (h.sample("leaky_token_events_relay_failures_total", stage="publish") or 0) > 0
        assert not bus.delivered
        bus.down = False
        await eventually(lambda: gauge("pending") == 0, 5, what="the backlog drains")
        await eventually(lambda: gauge("lag_seconds") == 0, 5, what="no event waits")
        assert len(bus.delivered) == 2
        assert h.sample("leaky_token_events_relayed_total") == 2


async def test_reservations_the_store_expires_are_counted_as_expired(tmp_path: Path) -> None:
    async with token_service(tmp_path, store_sweep_interval_ms=10) as h:
        held = pb.ReserveRequest(user_id="user-1", provider="openai", tokens=40)
        held.ttl.FromSeconds(1)
        await h.stub.Reserve(held, metadata=h.auth())
        h.clock.advance(seconds=2)
        await eventually(
            lambda: decisions(h, "release", "none", "all", "expired") == 1,
            5,
            what="the sweeper released the reservation",
        )
        assert (h.sample("leaky_token_store_latency_seconds_count", operation="sweep") or 0) >= 1
