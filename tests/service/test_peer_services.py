"""Token, analytics and provider built with injected collaborators: fake clock, in-process keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC

import grpc
import pytest

from leaky.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from leaky.provider.v1 import provider_pb2_grpc
from leaky.token.v1 import token_pb2, token_pb2_grpc
from leaky_tokens.analytics.bootstrap import AnalyticsSettings
from leaky_tokens.analytics.bootstrap import build as build_analytics
from leaky_tokens.provider.bootstrap import ProviderSettings
from leaky_tokens.provider.bootstrap import build as build_provider
from leaky_tokens.runtime.server import RunningServer, start_server
from leaky_tokens.token.bootstrap import TokenSettings
from leaky_tokens.token.bootstrap import build as build_token
from tests.support.fakes import FakeClock
from tests.support.jwks import KeySet, bearer


@dataclass
class Peers:
    keys: KeySet
    clock: FakeClock
    token: token_pb2_grpc.TokenServiceAsyncStub
    provider: provider_pb2_grpc.ProviderServiceAsyncStub
    analytics: analytics_pb2_grpc.AnalyticsServiceAsyncStub


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    keys, clock = KeySet("leaky-tokens-auth", "leaky-tokens"), FakeClock()

    def monotonic() -> float:
        return clock.now().timestamp()

    token_settings = TokenSettings(port=0, metrics_port=0, jwks_max_age_seconds=30)
    token = await build_token(token_settings, clock=clock, jwks=keys.fetch, monotonic=monotonic)
    analytics_settings = AnalyticsSettings(port=0, metrics_port=0)
    analytics = await build_analytics(
        analytics_settings, clock=clock, jwks=keys.fetch, monotonic=monotonic
    )
    provider_settings = ProviderSettings(port=0, metrics_port=0)
    provider = await build_provider(provider_settings, jwks=keys.fetch, monotonic=monotonic)
    servers: list[RunningServer] = [
        await start_server(token.spec, token_settings, token.verifier),
        await start_server(analytics.spec, analytics_settings, analytics.verifier),
        await start_server(provider.spec, provider_settings, provider.verifier),
    ]
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{servers[0].port}") as token_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{servers[1].port}") as analytics_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{servers[2].port}") as provider_channel,
    ):
        yield Peers(
            keys,
            clock,
            token_pb2_grpc.TokenServiceStub(token_channel),
            provider_pb2_grpc.ProviderServiceStub(provider_channel),
            analytics_pb2_grpc.AnalyticsServiceStub(analytics_channel),
        )
    for server in servers:
        await server.stop(0)
    await token.close()
    await analytics.close()
    await provider.close()


async def test_public_probes_tell_the_injected_clock(peers: Peers) -> None:
    status = await peers.token.GetStatus(token_pb2.GetStatusRequest())
    assert status.timestamp.ToDatetime(tzinfo=UTC) == peers.clock.now()
    peers.clock.advance(hours=1)
    health = await peers.analytics.GetHealth(analytics_pb2.GetHealthRequest())
    assert health.timestamp.ToDatetime(tzinfo=UTC) == peers.clock.now()


async def test_analytics_queries_verify_callers_with_the_injected_keys(peers: Peers) -> None:
    request = analytics_pb2.GetUsageRequest(provider="openai")
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await peers.analytics.GetUsage(request)
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    usage = await peers.analytics.GetUsage(request, metadata=bearer(peers.keys.token()))
    assert (usage.provider, usage.count) == ("openai", 0)


async def test_unwritten_protected_rpc_still_requires_credentials(peers: Peers) -> None:
    for call in (peers.token.Consume(token_pb2.ConsumeRequest()),):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def _get_quota(peers: Peers, token: str) -> grpc.StatusCode:
    """The code of an authenticated call: INVALID_ARGUMENT (an empty request) means the
    token was accepted."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await peers.token.GetQuota(token_pb2.GetQuotaRequest(), metadata=bearer(token))
    return info.value.code()


async def test_retired_key_is_refused_once_the_configured_age_passes(peers: Peers) -> None:
    old = peers.keys.token("k1")
    assert await _get_quota(peers, old) == grpc.StatusCode.INVALID_ARGUMENT
    peers.keys.add("k2")
    del peers.keys.private["k1"]  # rotation retired it
    peers.clock.advance(seconds=29)
    assert await _get_quota(peers, old) == grpc.StatusCode.INVALID_ARGUMENT  # within the bound
    peers.clock.advance(seconds=2)
    assert await _get_quota(peers, old) == grpc.StatusCode.UNAUTHENTICATED
    assert await _get_quota(peers, peers.keys.token("k2")) == grpc.StatusCode.INVALID_ARGUMENT


async def test_public_probe_answers_with_any_token_while_the_keys_cannot_be_fetched(
    peers: Peers,
) -> None:
    peers.keys.down = True  # never fetched: a protected RPC can only be UNAVAILABLE
    token = peers.keys.token()
    assert await _get_quota(peers, token) == grpc.StatusCode.UNAVAILABLE
    status = await peers.token.GetStatus(token_pb2.GetStatusRequest(), metadata=bearer(token))
    assert status.status == "ok"
