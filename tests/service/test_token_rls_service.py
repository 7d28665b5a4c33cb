"""ShouldRateLimit through the token service's real grpc.aio server, without credentials."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2 as pb
from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2_grpc
from leaky_tokens.gateway import envoy_config
from leaky_tokens.runtime.server import start_server
from leaky_tokens.token.bootstrap import TokenSettings
from leaky_tokens.token.bootstrap import build as build_token
from leaky_tokens.token.rls_servicer import SHOULD_RATE_LIMIT
from tests.support.fakes import FakeClock
from tests.support.jwks import KeySet

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "rls-bench-leaky.yaml"
SHARED = ROOT.parent / "shared" / "bench" / "rls-bench" / "runtime" / "ratelimit" / "config"
R = pb.RateLimitResponse


def request(key: str, value: str, domain: str = "leaky") -> pb.RateLimitRequest:
    req = pb.RateLimitRequest(domain=domain)
    req.descriptors.add().entries.add(key=key, value=value)
    return req


async def serve(config: str) -> AsyncIterator[rls_pb2_grpc.RateLimitServiceAsyncStub]:
    keys = KeySet("leaky-tokens-auth", "leaky-tokens")
    settings = TokenSettings(port=0, metrics_port=0, rls_config=config)
    token = await build_token(settings, clock=FakeClock(), jwks=keys.fetch)
    server = await start_server(token.spec, settings, token.verifier)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield rls_pb2_grpc.RateLimitServiceStub(channel)
    await server.stop(0)
    await token.close()


@pytest.fixture
async def rls() -> AsyncIterator[rls_pb2_grpc.RateLimitServiceAsyncStub]:
    async for stub in serve(str(FIXTURE)):
        yield stub


async def enforce_bench_limits(stub: rls_pb2_grpc.RateLimitServiceAsyncStub) -> None:
    """The bench's two rules: user_id (10^9 a second) allowed, api_key 10 a minute."""
    hot = await stub.ShouldRateLimit(request("user_id", "u1"))
    assert hot.overall_code == R.OK
    assert hot.statuses[0].current_limit.requests_per_unit == 1_000_000_000
    assert hot.statuses[0].current_limit.unit == R.RateLimit.SECOND
    codes = [(await stub.ShouldRateLimit(request("api_key", "k"))).overall_code for _ in range(11)]
    assert codes == [R.OK] * 10 + [R.OVER_LIMIT]
    over = await stub.ShouldRateLimit(request("api_key", "k"))
    assert over.statuses[0].code == R.OVER_LIMIT
    assert over.statuses[0].limit_remaining == 0
    assert 0 < over.statuses[0].duration_until_reset.seconds <= 60
    assert {h.key: h.value for h in over.response_headers_to_add}["x-ratelimit-limit"] == "10"


async def test_the_bench_config_copy_is_enforced_without_a_jwt(
    rls: rls_pb2_grpc.RateLimitServiceAsyncStub,
) -> None:
    await enforce_bench_limits(rls)


async def test_the_shared_bench_config_directory_loads_unchanged() -> None:
    if not (SHARED / "leaky.yaml").exists():
        pytest.skip(f"{SHARED} is not checked out next to this clone")
    async for stub in serve(str(SHARED)):
        await enforce_bench_limits(stub)


async def test_a_bad_request_is_invalid_argument_with_field_details(
    rls: rls_pb2_grpc.RateLimitServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rls.ShouldRateLimit(pb.RateLimitRequest(domain="leaky"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details)
    assert [v.field for v in bad.field_violations] == ["descriptors"]


async def test_reflection_describes_the_rls_service_for_grpcurl() -> None:
    keys = KeySet("leaky-tokens-auth", "leaky-tokens")
    settings = TokenSettings(port=0, metrics_port=0, rls_config=str(FIXTURE))
    token = await build_token(settings, clock=FakeClock(), jwks=keys.fetch)
    server = await start_server(token.spec, settings, token.verifier)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        async for answer in stub.ServerReflectionInfo(iter([ask])):
            names = {s.name for s in answer.list_services_response.service}
    await server.stop(0)
    await token.close()
    assert "envoy.service.ratelimit.v3.RateLimitService" in names


def test_the_gateway_routes_nothing_to_the_rls_method() -> None:
    config = envoy_config.render(
        listen=("127.0.0.1", 1), admin=("127.0.0.1", 2), upstreams=envoy_config.eds_upstreams()
    )
    filters = [
        f
        for listener in config["static_resources"]["listeners"]
        for chain in listener["filter_chains"]
        for f in chain["filters"]
    ]
    forwarding = [
        r["match"]
        for f in filters
        for host in f["typed_config"]["route_config"]["virtual_hosts"]
        for r in host["routes"]
        if "route" in r
    ]
    assert forwarding, "no forwarding routes found: the config's shape changed"
    for match in forwarding:
        if "prefix" in match:
            assert not SHOULD_RATE_LIMIT.startswith(match["prefix"]), match
        elif "path" in match:
            assert match["path"] != SHOULD_RATE_LIMIT
        else:
            assert not re.fullmatch(match["safe_regex"]["regex"], SHOULD_RATE_LIMIT), match
    text = json.dumps(config)
    assert "envoy.service.ratelimit" not in text  # nor transcoded, nor named anywhere
