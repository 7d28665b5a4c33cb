"""The analytics service through a real stub: every query, its input checks, its scoping, and
exact answers over a random history compared with a brute-force computation."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, timestamp_pb2

from leaky.analytics.v1 import analytics_pb2 as pb
from leaky.analytics.v1 import analytics_pb2_grpc
from leaky.token.v1 import token_pb2
from leaky_tokens.analytics.adapters.memory_usage_store import InMemoryUsageStore
from leaky_tokens.analytics.bootstrap import AnalyticsComponents, AnalyticsSettings, build
from leaky_tokens.analytics.domain.facts import FactKind, PurchaseState, UsageFact
from leaky_tokens.analytics.domain.ports import Scope, ScopeKind
from leaky_tokens.analytics.domain.reports import to_ms
from leaky_tokens.analytics.domain.totals import Totals
from leaky_tokens.analytics.domain.windows import DAY_MS, HOUR_MS, MINUTE_MS, minute_window
from leaky_tokens.runtime.identity import ADMIN
from leaky_tokens.runtime.membership import InMemoryMembership
from leaky_tokens.runtime.server import start_server
from tests.support.fakes import FakeClock
from tests.support.grpc_errors import reason, violations
from tests.support.jwks import KeySet, bearer
from tests.support.usage_facts import (
    ORGS,
    PROVIDERS,
    USERS,
    brute,
    in_scope,
    purchase,
    random_history,
    sourced,
    usage,
)

NOW = datetime(2026, 3, 4, 13, 27, 41, 250_000, tzinfo=UTC)
NOW_MS = to_ms(NOW)
Metadata = tuple[tuple[str, str], ...]


@dataclass
class Analytics:
    stub: analytics_pb2_grpc.AnalyticsServiceAsyncStub
    store: InMemoryUsageStore
    members: InMemoryMembership
    keys: KeySet
    components: AnalyticsComponents

    def auth(self, user: str, *roles: str, orgs: tuple[str, ...] = ()) -> Metadata:
        """A caller's metadata; `orgs` only goes in the JWT (membership is asked of auth)."""
        return bearer(self.keys.token(sub=user, roles=list(roles or ("USER",)), orgs=list(orgs)))

    def admin(self) -> Metadata:
        return self.auth("root", ADMIN)


@pytest.fixture
async def svc() -> AsyncIterator[Analytics]:
    keys, clock = KeySet("leaky-tokens-auth", "leaky-tokens"), FakeClock(NOW)
    store, members = InMemoryUsageStore(), InMemoryMembership()
    settings = AnalyticsSettings(port=0, metrics_port=0)
    components = await build(
        settings,
        clock=clock,
        jwks=keys.fetch,
        monotonic=lambda: clock.now().timestamp(),
        store=store,
        membership=members,
    )
    server = await start_server(components.spec, settings, components.verifier)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            yield Analytics(stub, store, members, keys, components)
    finally:
        await server.stop(0)
        await components.close()


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


def ms(ts: timestamp_pb2.Timestamp) -> int:
    return ts.ToMilliseconds()


def ts(at_ms: int) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromMilliseconds(at_ms)
    return out


def totals_of(message: pb.UsageTotals) -> tuple[int, ...]:
    m = message
    return (
        m.events, m.allowed_events, m.denied_events, m.tokens, m.allowed_tokens,
        m.denied_tokens, m.refunded_tokens, m.unique_users,
    )  # fmt: skip


def expected(t: Totals) -> tuple[int, ...]:
    return (
        t.events, t.allowed_events, t.denied_events, t.tokens, t.allowed_tokens,
        t.denied_tokens, t.refunded_tokens, t.unique_users,
    )  # fmt: skip


# -- happy paths ----------------------------------------------------------------------------


async def test_usage_lists_the_latest_decisions_newest_first(svc: Analytics) -> None:
    facts = [usage(NOW_MS - i * 1000, user="alice", tokens=i) for i in range(30)]
    same_ms = usage(NOW_MS, user="alice", org="org-a", allowed=False, event_id="zz-last")
    await svc.store.project(sourced([*facts, same_ms, usage(NOW_MS, kind=FactKind.REFUND)]))
    got = await svc.stub.GetUsage(pb.GetUsageRequest(provider="openai"), metadata=svc.admin())
    assert (got.provider, got.count, len(got.items)) == ("openai", 20, 20)  # default limit
    first = got.items[0]
    assert (first.event_id, first.user_id, first.org_id, first.allowed) == (
        "zz-last", "alice", "org-a", False,
    )  # fmt: skip
    assert (first.key.provider, ms(first.key.timestamp)) == ("openai", NOW_MS)
    assert [i.event_id for i in got.items[1:3]] == [facts[0].event_id, facts[1].event_id]
    assert [ms(i.key.timestamp) for i in got.items] == sorted(
        (ms(i.key.timestamp) for i in got.items), reverse=True
    )
    for limit, count in ((0, 1), (-4, 1), (5, 5), (500, 31)):
        page = await svc.stub.GetUsage(
            pb.GetUsageRequest(provider="openai", limit=limit), metadata=svc.admin()
        )
        assert page.count == count, limit
    as_json = json_format.MessageToDict(got, always_print_fields_with_no_presence=True)
    assert set(as_json["items"][0]) == {"key", "userId", "tokens", "allowed", "orgId", "eventId"}
    assert set(as_json) == {"provider", "count", "items"}


async def test_report_sums_the_window_exactly(svc: Analytics) -> None:
    start, _ = minute_window(NOW_MS, 60)
    await svc.store.project(
        sourced(
            [
                usage(start, user="bob", tokens=30),
                usage(start + 5, user="alice", tokens=30, allowed=False),
                usage(NOW_MS, user="carol", tokens=40, kind=FactKind.RESERVE),
                usage(NOW_MS, user="bob", tokens=5, kind=FactKind.REFUND),
                usage(NOW_MS, user="dave", tokens=2, kind=FactKind.RELEASE),
                usage(start - 1, user="erin", tokens=900),  # just before the window
                usage(NOW_MS, user="erin", tokens=900, provider="qwen"),
            ]
        )
    )
    got = await svc.stub.GetReport(pb.GetReportRequest(provider="openai"), metadata=svc.admin())
    assert (ms(got.window_start), ms(got.window_end)) == (start, NOW_MS)
    assert (got.total_events, got.allowed_events, got.denied_events) == (3, 2, 1)
    assert (got.total_tokens, got.allowed_tokens, got.denied_tokens) == (100, 70, 30)
    assert got.refunded_tokens == 7
    assert got.average_tokens_per_event == pytest.approx(100 / 3)
    assert (got.unique_users, got.sample_limit) == (3, 5000)
    # Most tokens first, ties by user id.
    assert [(u.user_id, u.total_tokens, u.events) for u in got.top_users] == [
        ("carol", 40, 1), ("alice", 30, 1), ("bob", 30, 1),
    ]  # fmt: skip
    assert (got.user_id, got.org_id) == ("", "")
    wider = await svc.stub.GetReport(
        pb.GetReportRequest(provider="openai", window_minutes=61, limit=9000),
        metadata=svc.admin(),
    )
    assert (wider.total_tokens, wider.sample_limit) == (1000, 5000)
    assert next(u.user_id for u in wider.top_users) == "erin"
    clamped = await svc.stub.GetReport(
        pb.GetReportRequest(provider="openai", window_minutes=100_000, limit=7),
        metadata=svc.admin(),
    )
    assert ms(clamped.window_end) - ms(clamped.window_start) < DAY_MS  # 1440 minutes at most
    assert ms(clamped.window_start) == minute_window(NOW_MS, 1440)[0]
    assert clamped.sample_limit == 7
    empty = await svc.stub.GetReport(pb.GetReportRequest(provider="gemini"), metadata=svc.admin())
    assert (empty.total_events, empty.average_tokens_per_event, len(empty.top_users)) == (0, 0, 0)


async def test_report_lists_at_most_five_top_users(svc: Analytics) -> None:
    await svc.store.project(sourced([usage(NOW_MS, user=f"u{i}", tokens=i) for i in range(9)]))
    got = await svc.stub.GetReport(pb.GetReportRequest(provider="openai"), metadata=svc.admin())
    assert [u.user_id for u in got.top_users] == ["u8", "u7", "u6", "u5", "u4"]
    assert got.unique_users == 9


async def test_anomalies_flag_a_spike_and_say_infinity_in_json(svc: Analytics) -> None:
    start, _ = minute_window(NOW_MS, 60)
    await svc.store.project(
        sourced(
            [
                usage(NOW_MS, tokens=50),
                usage(start - 1, tokens=40),
                usage(start - 90 * MINUTE_MS, tokens=40),
            ]
        )
    )
    got = await svc.stub.GetAnomalies(
        pb.GetAnomaliesRequest(provider="openai", baseline_windows=2), metadata=svc.admin()
    )
    assert (ms(got.window_start), ms(got.window_end)) == (start, NOW_MS)
    assert (got.current_tokens, got.baseline_average_tokens, got.ratio) == (50, 40.0, 1.25)
    assert (got.anomaly, got.threshold_multiplier, got.baseline_windows) == (False, 2.0, 2)
    assert got.sample_limit == 5000
    spike = await svc.stub.GetAnomalies(
        pb.GetAnomaliesRequest(provider="openai", baseline_windows=2, threshold_multiplier=1.25),
        metadata=svc.admin(),
    )
    assert spike.anomaly
    lone = await svc.stub.GetAnomalies(
        pb.GetAnomaliesRequest(provider="openai", window_minutes=1, baseline_windows=100),
        metadata=svc.admin(),
    )
    assert (lone.current_tokens, lone.baseline_windows, lone.ratio) == (50, 24, math.inf)
    assert not lone.anomaly
    as_json = json_format.MessageToDict(lone, always_print_fields_with_no_presence=True)
    assert as_json["ratio"] == "Infinity"
    assert {"currentTokens", "baselineAverageTokens", "thresholdMultiplier", "sampleLimit"} <= set(
        as_json
    )


async def test_series_returns_every_bucket_of_the_range(svc: Analytics) -> None:
    day = NOW_MS - NOW_MS % DAY_MS
    await svc.store.project(
        sourced([usage(day - DAY_MS + 7, user="a", tokens=3), usage(day + 1, user="b", tokens=4)])
    )
    got = await svc.stub.GetUsageSeries(
        pb.GetUsageSeriesRequest(
            provider="openai",
            resolution=pb.RESOLUTION_DAY,
            start=ts(day - 3 * DAY_MS + 5),
            end=ts(NOW_MS),
        ),
        metadata=svc.admin(),
    )
    assert got.resolution == pb.RESOLUTION_DAY
    assert [ms(p.start) for p in got.points] == [day - 3 * DAY_MS + i * DAY_MS for i in range(4)]
    assert [p.totals.tokens for p in got.points] == [0, 0, 3, 4]
    assert json_format.MessageToDict(got)["resolution"] == "RESOLUTION_DAY"
    default = await svc.stub.GetUsageSeries(
        pb.GetUsageSeriesRequest(provider="openai", resolution=pb.RESOLUTION_HOUR),
        metadata=svc.admin(),
    )
    assert len(default.points) == 61
    assert ms(default.points[-1].start) == NOW_MS - NOW_MS % HOUR_MS


async def test_a_series_at_the_first_representable_day_starts_there(svc: Analytics) -> None:
    # The default start (end minus 60 buckets) would be before 0001-01-01, which no Timestamp
    # holds: the points start at that day rather than the call failing INTERNAL.
    first = to_ms(datetime(1, 1, 1, tzinfo=UTC))
    got = await svc.stub.GetUsageSeries(
        pb.GetUsageSeriesRequest(
            provider="openai", resolution=pb.RESOLUTION_DAY, end=ts(first + 2 * DAY_MS + 5)
        ),
        metadata=svc.admin(),
    )
    assert [ms(p.start) for p in got.points] == [first, first + DAY_MS, first + 2 * DAY_MS]


async def test_compare_providers_ranks_by_tokens_with_shares(svc: Analytics) -> None:
    await svc.store.project(
        sourced(
            [
                usage(NOW_MS, provider="qwen", tokens=75),
                usage(NOW_MS, provider="openai", tokens=25, allowed=False),
                usage(NOW_MS, provider="gemini", tokens=3, kind=FactKind.REFUND),
                usage(NOW_MS - 2 * HOUR_MS, provider="mistral", tokens=1000),  # out of window
            ]
        )
    )
    got = await svc.stub.CompareProviders(pb.CompareProvidersRequest(), metadata=svc.admin())
    rows = [(p.provider, p.totals.tokens, p.token_share) for p in got.providers]
    assert rows == [("qwen", 75, 0.75), ("openai", 25, 0.25), ("gemini", 0, 0.0)]
    assert got.providers[2].totals.refunded_tokens == 3
    assert ms(got.window_start) == minute_window(NOW_MS, 60)[0]
    day = await svc.stub.CompareProviders(
        pb.CompareProvidersRequest(window_minutes=1440), metadata=svc.admin()
    )
    assert day.providers[0].provider == "mistral"


async def test_purchase_history_shows_the_latest_state_of_each_saga(svc: Analytics) -> None:
    t = NOW_MS - HOUR_MS
    await svc.store.project(
        sourced(
            [
                purchase("s1", PurchaseState.STARTED, t, user="alice", tokens=100),
                purchase("s1", PurchaseState.PAYMENT_RESERVED, t + 1, user="alice", tokens=100),
                purchase("s1", PurchaseState.TOKENS_ALLOCATED, t + 2, user="alice", tokens=100),
                purchase("s1", PurchaseState.PAYMENT_CAPTURED, t + 3, user="alice", tokens=100),
                purchase("s1", PurchaseState.COMPLETED, t + 4, user="alice", tokens=100),
                purchase("s2", PurchaseState.STARTED, t + 10, user="alice", org="org-a"),
                purchase(
                    "s2",
                    PurchaseState.COMPENSATING,
                    t + 11,
                    user="alice",
                    org="org-a",
                    reason="card declined",
                ),
                purchase(
                    "s2",
                    PurchaseState.FAILED,
                    t + 12,
                    user="alice",
                    org="org-a",
                    reason="card declined",
                ),
                purchase("s2", PurchaseState.PAYMENT_RESERVED, t + 13, user="alice", org="org-a"),
                purchase("s3", PurchaseState.PAYMENT_CAPTURED, t + 20, user="alice"),
                purchase("s4", PurchaseState.COMPENSATING, t + 30, user="alice"),
                purchase("s5", PurchaseState.STARTED, t + 40, user="bob", org="org-a"),
            ]
        )
    )
    svc.members.members["alice"] = {"org-a"}
    mine = await svc.stub.GetPurchaseHistory(
        pb.GetPurchaseHistoryRequest(), metadata=svc.auth("alice")
    )
    assert (mine.user_id, mine.org_id) == ("alice", "")
    assert [p.saga_id for p in mine.purchases] == ["s4", "s3", "s2", "s1"]
    by_id = {p.saga_id: p for p in mine.purchases}
    s1, s2 = by_id["s1"], by_id["s2"]
    assert (s1.status, s1.tokens, ms(s1.created_at), ms(s1.updated_at)) == (
        token_pb2.PURCHASE_STATUS_COMPLETED, 100, t, t + 4,
    )  # fmt: skip
    assert (s2.status, s2.failure_reason, s2.org_id) == (
        token_pb2.PURCHASE_STATUS_FAILED, "card declined", "org-a",
    )  # fmt: skip
    assert by_id["s3"].status == token_pb2.PURCHASE_STATUS_TOKENS_ALLOCATED
    assert by_id["s4"].status == token_pb2.PURCHASE_STATUS_PAYMENT_RESERVED
    assert by_id["s4"].failure_reason == ""
    assert (mine.completed_purchases, mine.completed_tokens, mine.failed_purchases) == (1, 100, 1)
    one = await svc.stub.GetPurchaseHistory(
        pb.GetPurchaseHistoryRequest(limit=1), metadata=svc.auth("alice")
    )
    assert [p.saga_id for p in one.purchases] == ["s4"]
    assert one.completed_purchases == 1, "totals are over every purchase, not the page"
    org = await svc.stub.GetPurchaseHistory(
        pb.GetPurchaseHistoryRequest(org_id="org-a"), metadata=svc.auth("alice")
    )
    assert ([p.saga_id for p in org.purchases], org.org_id) == (["s5", "s2"], "org-a")
    everyone = await svc.stub.GetPurchaseHistory(
        pb.GetPurchaseHistoryRequest(), metadata=svc.admin()
    )
    assert len(everyone.purchases) == 5
    as_json = json_format.MessageToDict(mine)
    assert {"purchases", "completedPurchases", "completedTokens", "failedPurchases"} <= set(as_json)
    assert as_json["purchases"][0]["sagaId"] == "s4"


# -- bad input and outages ------------------------------------------------------------------


async def test_bad_input_is_invalid_argument_naming_each_field(svc: Analytics) -> None:
    a = svc.admin()
    long_id = "x" * 129
    cases: list[tuple[Any, list[str]]] = [
        (svc.stub.GetUsage(pb.GetUsageRequest(), metadata=a), ["provider"]),
        (svc.stub.GetUsage(pb.GetUsageRequest(provider="OpenAI"), metadata=a), ["provider"]),
        (svc.stub.GetUsage(pb.GetUsageRequest(provider="p" * 65), metadata=a), ["provider"]),
        (
            svc.stub.GetReport(
                pb.GetReportRequest(provider=" openai", user_id=long_id), metadata=a
            ),
            ["provider", "userId"],
        ),
        (
            svc.stub.GetReport(pb.GetReportRequest(provider="openai", org_id="o\x01"), metadata=a),
            ["orgId"],
        ),
        (
            svc.stub.GetAnomalies(
                pb.GetAnomaliesRequest(provider="openai", threshold_multiplier=math.nan),
                metadata=a,
            ),
            ["thresholdMultiplier"],
        ),
        (
            svc.stub.GetUsageSeries(pb.GetUsageSeriesRequest(provider="openai"), metadata=a),
            ["resolution"],
        ),
        (
            svc.stub.GetUsageSeries(
                pb.GetUsageSeriesRequest(provider="openai", resolution=pb.Resolution.ValueType(7)),
                metadata=a,
            ),
            ["resolution"],
        ),
        (
            svc.stub.GetUsageSeries(
                pb.GetUsageSeriesRequest(
                    provider="", resolution=pb.RESOLUTION_MINUTE, start=ts(NOW_MS), end=ts(0)
                ),
                metadata=a,
            ),
            ["provider", "start"],
        ),
        (
            svc.stub.GetUsageSeries(
                pb.GetUsageSeriesRequest(
                    provider="openai",
                    resolution=pb.RESOLUTION_MINUTE,
                    start=ts(NOW_MS - 1440 * MINUTE_MS),
                ),
                metadata=a,
            ),
            ["start"],
        ),
        (
            svc.stub.GetUsageSeries(
                pb.GetUsageSeriesRequest(
                    provider="openai",
                    resolution=pb.RESOLUTION_MINUTE,
                    end=timestamp_pb2.Timestamp(seconds=1, nanos=-5),
                ),
                metadata=a,
            ),
            ["end"],
        ),
        (  # an invalid time is reported with the request's other faults, not alone
            svc.stub.GetUsageSeries(
                pb.GetUsageSeriesRequest(
                    provider="OpenAI",
                    start=timestamp_pb2.Timestamp(seconds=-(10**12)),
                    user_id=long_id,
                ),
                metadata=a,
            ),
            ["start", "provider", "resolution", "userId"],
        ),
        (
            svc.stub.CompareProviders(
                pb.CompareProvidersRequest(user_id="u", org_id="o"), metadata=a
            ),
            ["orgId"],
        ),
        (
            svc.stub.GetPurchaseHistory(pb.GetPurchaseHistoryRequest(user_id=long_id), metadata=a),
            ["userId"],
        ),
    ]
    for call, fields in cases:
        error = await refused(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert violations(error) == fields


async def test_a_store_outage_is_unavailable(svc: Analytics) -> None:
    svc.store.down = True
    for call in (
        svc.stub.GetUsage(pb.GetUsageRequest(provider="openai"), metadata=svc.admin()),
        svc.stub.GetReport(pb.GetReportRequest(provider="openai"), metadata=svc.admin()),
        svc.stub.CompareProviders(pb.CompareProvidersRequest(), metadata=svc.admin()),
        svc.stub.GetPurchaseHistory(pb.GetPurchaseHistoryRequest(), metadata=svc.admin()),
    ):
        error = await refused(call)
        assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_queries_need_a_caller(svc: Analytics) -> None:
    error = await refused(svc.stub.GetReport(pb.GetReportRequest(provider="openai")))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    health = await svc.stub.GetHealth(pb.GetHealthRequest())
    assert health.status == "ok"


# -- scoping ----------------------------------------------------------------------------------


def _calls(svc: Analytics, md: Metadata, user_id: str = "", org_id: str = "") -> list[Any]:
    """One call of every query RPC reading the scope (user_id, org_id)."""
    ids: dict[str, Any] = {"user_id": user_id, "org_id": org_id}
    return [
        svc.stub.GetUsage(pb.GetUsageRequest(provider="openai", limit=200, **ids), metadata=md),
        svc.stub.GetReport(pb.GetReportRequest(provider="openai", **ids), metadata=md),
        svc.stub.GetAnomalies(pb.GetAnomaliesRequest(provider="openai", **ids), metadata=md),
        svc.stub.GetUsageSeries(
            pb.GetUsageSeriesRequest(provider="openai", resolution=pb.RESOLUTION_MINUTE, **ids),
            metadata=md,
        ),
        svc.stub.CompareProviders(pb.CompareProvidersRequest(**ids), metadata=md),
        svc.stub.GetPurchaseHistory(pb.GetPurchaseHistoryRequest(**ids), metadata=md),
    ]


def _seen(answers: list[Any]) -> tuple[int, int, int, int, int, int]:
    """What each answer counted: events, tokens, current tokens, series tokens, compared
    tokens, purchases."""
    usage_, report, anomalies, series, compare, history = answers
    return (
        usage_.count,
        report.total_tokens,
        anomalies.current_tokens,
        sum(p.totals.tokens for p in series.points),
        sum(p.totals.tokens for p in compare.providers),
        len(history.purchases),
    )


async def test_each_caller_reads_only_the_scopes_it_may(svc: Analytics) -> None:
    await svc.store.project(
        sourced(
            [
                usage(NOW_MS, user="alice", tokens=1),
                usage(NOW_MS, user="alice", org="org-a", tokens=10),
                usage(NOW_MS, user="bob", org="org-a", tokens=100),
                usage(NOW_MS, user="bob", org="org-b", tokens=1000),
                usage(NOW_MS, user="bob", tokens=10000),
                purchase("pa", PurchaseState.STARTED, NOW_MS, user="alice"),
                purchase("pb", PurchaseState.STARTED, NOW_MS, user="bob", org="org-a"),
                purchase("pc", PurchaseState.STARTED, NOW_MS, user="bob", org="org-b"),
            ]
        )
    )
    svc.members.members["alice"] = {"org-a"}
    # The JWT names org-b, but auth says alice is no longer a member: auth wins.
    alice = svc.auth("alice", orgs=("org-a", "org-b"))

    async def answers(md: Metadata, user_id: str = "", org_id: str = "") -> tuple[int, ...]:
        return _seen([await call for call in _calls(svc, md, user_id, org_id)])

    assert await answers(alice) == (2, 11, 11, 11, 11, 1)
    assert await answers(alice, user_id="alice") == (2, 11, 11, 11, 11, 1)
    assert await answers(alice, org_id="org-a") == (2, 110, 110, 110, 110, 1)
    admin = svc.admin()
    assert await answers(admin) == (5, 11111, 11111, 11111, 11111, 3)
    assert await answers(admin, user_id="bob") == (3, 11100, 11100, 11100, 11100, 2)
    assert await answers(admin, org_id="org-b") == (1, 1000, 1000, 1000, 1000, 1)

    scoped = await svc.stub.GetReport(
        pb.GetReportRequest(provider="openai", org_id="org-a"), metadata=alice
    )
    assert (scoped.user_id, scoped.org_id) == ("", "org-a")
    own = await svc.stub.GetReport(pb.GetReportRequest(provider="openai"), metadata=alice)
    assert (own.user_id, own.org_id) == ("alice", "")

    for user_id, org_id, why in (
        ("bob", "", "NOT_YOUR_USER_ID"),
        ("", "org-b", "NOT_ORG_MEMBER"),
        ("", "org-c", "NOT_ORG_MEMBER"),
    ):
        for call in _calls(svc, alice, user_id, org_id):
            error = await refused(call)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (user_id, org_id)
            assert reason(error) == why
    for md in (alice, admin):
        for call in _calls(svc, md, "alice", "org-a"):
            error = await refused(call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert violations(error) == ["orgId"]


# -- exactness --------------------------------------------------------------------------------


def _scopes() -> list[tuple[Scope, str, str]]:
    """(scope, user_id, org_id) of every scope, each read by ADMIN."""
    found = [(Scope.everyone(), "", "")]
    found += [(Scope(ScopeKind.USER, u), u, "") for u in USERS[:4]]
    found += [(Scope(ScopeKind.ORG, o), "", o) for o in ORGS]
    return found


async def test_every_answer_equals_a_brute_force_count_of_the_facts(svc: Analytics) -> None:
    history = random_history(random.Random(20261202), NOW_MS, 600)  # noqa: S311 (a test's seed)
    delivered = history.delivered
    for i in range(0, len(delivered), 97):  # batches, as the projection commits them
        await svc.store.project(sourced(delivered[i : i + 97], first_offset=i))
    await svc.store.project(sourced(delivered[:50], first_offset=10_000))  # a replay
    facts = history.facts
    admin = svc.admin()
    # A user reading their own usage gets what ADMIN reads for them.
    own = Scope(ScopeKind.USER, USERS[0])
    mine = await svc.stub.GetReport(
        pb.GetReportRequest(provider="openai", window_minutes=1440), metadata=svc.auth(USERS[0])
    )
    assert mine.total_tokens == brute(facts, own, "openai", *minute_window(NOW_MS, 1440)).tokens
    assert mine.total_tokens > 0
    checked = 0
    for scope, user_id, org_id in _scopes():
        ids: dict[str, Any] = {"user_id": user_id, "org_id": org_id}
        for provider in PROVIDERS:
            for minutes in (1, 7, 60, 61, 600, 1440):
                start, end = minute_window(NOW_MS, minutes)
                want = brute(facts, scope, provider, start, end)
                got = await svc.stub.GetReport(
                    pb.GetReportRequest(provider=provider, window_minutes=minutes, **ids),
                    metadata=admin,
                )
                assert (
                    got.total_events, got.allowed_events, got.denied_events, got.total_tokens,
                    got.allowed_tokens, got.denied_tokens, got.refunded_tokens, got.unique_users,
                ) == expected(want), (scope, provider, minutes)  # fmt: skip
                assert got.average_tokens_per_event == pytest.approx(
                    want.tokens / want.events if want.events else 0.0
                )
                assert [(u.user_id, u.total_tokens, u.events) for u in got.top_users] == [
                    (u, s.tokens, s.events) for u, s in want.top_users(5)
                ]
                checked += 1
            for minutes, baseline in ((60, 4), (7, 24), (1440, 2), (90, 10)):
                start, end = minute_window(NOW_MS, minutes)
                span = minutes * MINUTE_MS
                current = brute(facts, scope, provider, start, end).tokens
                earlier = [
                    brute(facts, scope, provider, start - i * span, end - i * span).tokens
                    for i in range(1, baseline + 1)
                ]
                average = sum(earlier) / baseline
                found = await svc.stub.GetAnomalies(
                    pb.GetAnomaliesRequest(
                        provider=provider,
                        window_minutes=minutes,
                        baseline_windows=baseline,
                        threshold_multiplier=1.2,
                        **ids,
                    ),
                    metadata=admin,
                )
                assert found.current_tokens == current
                assert found.baseline_average_tokens == pytest.approx(average)
                ratio = current / average if average else (math.inf if current else 0.0)
                assert found.ratio == pytest.approx(ratio)
                assert found.anomaly == (average > 0 and ratio >= 1.2)
            for resolution, step, first, last in (
                (
                    pb.RESOLUTION_MINUTE,
                    MINUTE_MS,
                    NOW_MS - 1430 * MINUTE_MS,
                    NOW_MS + 5 * MINUTE_MS,
                ),
                (pb.RESOLUTION_HOUR, HOUR_MS, NOW_MS - 4 * DAY_MS, NOW_MS + DAY_MS),
                (pb.RESOLUTION_DAY, DAY_MS, NOW_MS - 5 * DAY_MS, NOW_MS + DAY_MS),
            ):
                series = await svc.stub.GetUsageSeries(
                    pb.GetUsageSeriesRequest(
                        provider=provider,
                        resolution=resolution,
                        start=ts(first),
                        end=ts(last),
                        **ids,
                    ),
                    metadata=admin,
                )
                bucket = first - first % step
                for point in series.points:
                    assert ms(point.start) == bucket
                    want = brute(facts, scope, provider, bucket, bucket + step)
                    assert totals_of(point.totals) == expected(want), (scope, resolution, bucket)
                    bucket += step
                assert bucket - step == last - last % step, "the series reaches the end"
        for minutes in (60, 1440):
            start, end = minute_window(NOW_MS, minutes)
            per = {p: brute(facts, scope, p, start, end) for p in PROVIDERS}
            used = {p: t for p, t in per.items() if t.events or t.refunded_tokens}
            everything = sum(t.tokens for t in used.values())
            compared = await svc.stub.CompareProviders(
                pb.CompareProvidersRequest(window_minutes=minutes, **ids), metadata=admin
            )
            assert [p.provider for p in compared.providers] == sorted(
                used, key=lambda p: (-used[p].tokens, p)
            )
            for row in compared.providers:
                assert totals_of(row.totals) == expected(used[row.provider])
                share = used[row.provider].tokens / everything if everything else 0.0
                assert row.token_share == pytest.approx(share)
        latest = await svc.stub.GetUsage(
            pb.GetUsageRequest(provider="openai", limit=200, **ids), metadata=admin
        )
        want_latest = sorted(
            (
                f
                for f in facts
                if f.provider == "openai" and f.kind.is_decision and in_scope(f, scope)
            ),
            key=lambda f: (f.occurred_at_ms, f.event_id),
            reverse=True,
        )[:200]
        assert [i.event_id for i in latest.items] == [f.event_id for f in want_latest]
        assert [_fact_of(i) for i in latest.items] == [_fact_of_usage(f) for f in want_latest]
    assert checked == len(_scopes()) * len(PROVIDERS) * 6


def _fact_of(item: pb.UsageItem) -> tuple[object, ...]:
    return (item.user_id, item.org_id, item.tokens, item.allowed, ms(item.key.timestamp))


def _fact_of_usage(f: UsageFact) -> tuple[object, ...]:
    return (f.user_id, f.org_id, f.tokens, f.allowed, f.occurred_at_ms)


async def test_close_closes_everything_even_when_one_closer_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = KeySet("leaky-tokens-auth", "leaky-tokens")
    components = await build(
        AnalyticsSettings(port=0, metrics_port=0),
        jwks=keys.fetch,
        store=InMemoryUsageStore(),
        membership=InMemoryMembership(),
    )
    closed: list[str] = []

    async def first() -> None:
        closed.append("store")

    async def broken() -> None:
        raise RuntimeError("the cluster would not shut down")

    components.closers[:] = [first, broken]  # closed newest first: broken, then first
    with caplog.at_level("ERROR"):
        await components.close()
    assert closed == ["store"]
    assert "closing a resource failed" in caplog.text
