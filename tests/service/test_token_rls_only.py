"""The ratelimit deployment (LEAKY_TOKEN_SERVE=rls, ADR 0047) through a real grpc.aio server:
ShouldRateLimit alone, the policy's edge limits, token descriptors refused on the memory store
(their buckets would not be the ones Consume charges), charged on a shared store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from leaky.token.v1 import token_pb2, token_pb2_grpc
from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2 as pb
from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2_grpc
from leaky_tokens.runtime.server import start_server
from leaky_tokens.runtime.settings import SettingsError
from leaky_tokens.token.adapters.in_memory_decision_store import InMemoryDecisionStore
from leaky_tokens.token.bootstrap import RLS_SLUG, TokenSettings
from leaky_tokens.token.bootstrap import build as build_token
from leaky_tokens.token.domain.ports import DecisionStore
from tests.support.exits import run_module
from tests.support.fakes import FakeClock
from tests.support.jwks import KeySet
from tests.support.rls_requests import descriptor_request, token_request

R = pb.RateLimitResponse
LOGIN = "/leaky.auth.v1.AuthService/Login"


def edge_request(method: str, address: str) -> pb.RateLimitRequest:
    """What Envoy's ratelimit filter sends for an anonymous call (edge_limits.rate_limits)."""
    return descriptor_request(("method", method), ("remote_address", address))


@asynccontextmanager
async def rls_only(store: DecisionStore | None = None) -> AsyncIterator[grpc.aio.Channel]:
    keys = KeySet("leaky-tokens-auth", "leaky-tokens")
    settings = TokenSettings(port=0, metrics_port=0, serve="rls")
    built = await build_token(settings, clock=FakeClock(), jwks=keys.fetch, store=store)
    server = await start_server(built.spec, settings, built.verifier)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield channel
    finally:
        await server.stop(0)
        await built.close()


def test_serve_takes_all_or_rls_only() -> None:
    assert TokenSettings().serve == "all"
    with pytest.raises(SettingsError, match="serve"):
        TokenSettings(serve="consume")


@pytest.mark.parametrize(("serve", "name"), [("rls", "ratelimit"), ("all", "token")])
def test_the_process_names_itself_after_what_it_serves(serve: str, name: str) -> None:
    # Its logs' `service` and its messages: the ratelimit deployment's used to say `token`.
    done = run_module(
        "leaky_tokens.token", {"LEAKY_TOKEN_SERVE": serve, "LEAKY_TOKEN_PROCESSES": "0"}
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"{name}: bad setting: LEAKY_TOKEN_PROCESSES must be at least 1"
    )


async def test_it_serves_should_rate_limit_alone_named_ratelimit() -> None:
    async with rls_only() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        whole = await health.Check(health_pb2.HealthCheckRequest())
        assert whole.status == health_pb2.HealthCheckResponse.SERVING
        rls = rls_pb2_grpc.RateLimitServiceStub(channel)
        answer = await rls.ShouldRateLimit(edge_request(LOGIN, "192.0.2.1"))
        assert answer.overall_code == R.OK
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await token_pb2_grpc.TokenServiceStub(channel).GetStatus(token_pb2.GetStatusRequest())
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    keys = KeySet("leaky-tokens-auth", "leaky-tokens")
    built = await build_token(TokenSettings(serve="rls"), clock=FakeClock(), jwks=keys.fetch)
    try:
        assert built.spec.slug == RLS_SLUG == "ratelimit"  # its Consul service and metrics
        assert built.spec.service_names == ("envoy.service.ratelimit.v3.RateLimitService",)
    finally:
        await built.close()


async def test_the_shipped_policy_edge_limits_apply() -> None:
    # Login: 20 a second per client address (the shipped policy, ADR 0042); the fake clock
    # stands still, so all 21 calls fall in one window.
    async with rls_only() as channel:
        rls = rls_pb2_grpc.RateLimitServiceStub(channel)
        codes = [
            (await rls.ShouldRateLimit(edge_request(LOGIN, "192.0.2.7"))).overall_code
            for _ in range(21)
        ]
        assert codes == [R.OK] * 20 + [R.OVER_LIMIT]
        other = await rls.ShouldRateLimit(edge_request(LOGIN, "192.0.2.8"))
        assert other.overall_code == R.OK


async def test_token_descriptors_on_the_memory_store_are_refused_not_counted() -> None:
    async with rls_only() as channel:
        rls = rls_pb2_grpc.RateLimitServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rls.ShouldRateLimit(token_request("u1", 10))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "token service" in (caught.value.details() or "")


async def test_token_descriptors_charge_a_shared_store() -> None:
    # The shared store stands in for Redis: what this deployment charges is what the token
    # service's Consume would see (openai: capacity 2000 in the shipped policy).
    store = InMemoryDecisionStore()
    async with rls_only(store) as channel:
        rls = rls_pb2_grpc.RateLimitServiceStub(channel)
        first = await rls.ShouldRateLimit(token_request("u2", 1500))
        assert first.overall_code == R.OK
        second = await rls.ShouldRateLimit(token_request("u2", 1500))
        assert second.overall_code == R.OVER_LIMIT
