"""The ratelimit deployment (LEAKY_TOKEN_SERVE=rls, ADR 0047) beside the token service on the
stack's Redis: one set of request counters and one set of token buckets for both processes."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import grpc
import pytest

from leaky.token.v1 import token_pb2 as pb
from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2 as rls
from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2_grpc
from leaky_tokens.runtime.server import start_server
from leaky_tokens.stack.orchestrator import Stack
from leaky_tokens.stack.redis import Redis as RedisComponent
from leaky_tokens.token.adapters.policy_file import PolicyFile
from leaky_tokens.token.bootstrap import TokenSettings, build
from tests.support.grpc_errors import reason
from tests.support.rls_requests import descriptor_request, token_request
from tests.support.stack import component
from tests.support.token_service import POLICY, redis_settings, token_service

pytestmark = pytest.mark.integration
R = rls.RateLimitResponse
PER_HOUR = 3
# The harness's small policy plus an hourly request limit per API key and openai's bucket
# (capacity 100) behind provider/user_id descriptors.
RLS_POLICY = POLICY + textwrap.dedent(
    f"""\
    rate_limits:
      domain: leaky
      descriptors:
        - key: api_key
          rate_limit: {{unit: hour, requests_per_unit: {PER_HOUR}}}
        - key: provider
          value: openai
          descriptors:
            - key: user_id
              token_bucket: openai
    """
)


def api_key(value: str) -> rls.RateLimitRequest:
    return descriptor_request(("api_key", value))


async def test_the_deployment_and_the_token_service_share_counters_and_buckets(
    stack: Stack, tmp_path: Path
) -> None:
    redis = component(stack, "redis")
    assert isinstance(redis, RedisComponent)
    settings = redis_settings(redis.url)
    async with token_service(tmp_path, policy=RLS_POLICY, **settings) as svc:
        # The deployment as `leaky up --stack` runs it: the same settings, serve=rls.
        config = TokenSettings(port=0, metrics_port=0, serve="rls", **settings)
        built = await build(
            config,
            clock=svc.clock,
            jwks=svc.keys.fetch,
            policy=PolicyFile(svc.policy_path),
        )
        server = await start_server(built.spec, config, built.verifier)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                deployment = rls_pb2_grpc.RateLimitServiceStub(channel)
                token_rls = rls_pb2_grpc.RateLimitServiceStub(svc.channel)
                # Request counters: three calls over both processes use the hour's budget.
                key = f"k{uuid.uuid4().hex[:6]}"
                answers = [
                    await token_rls.ShouldRateLimit(api_key(key)),
                    await deployment.ShouldRateLimit(api_key(key)),
                    await token_rls.ShouldRateLimit(api_key(key)),
                ]
                assert [a.overall_code for a in answers] == [R.OK] * PER_HOUR
                over = await deployment.ShouldRateLimit(api_key(key))
                assert over.overall_code == R.OVER_LIMIT
                assert (await token_rls.ShouldRateLimit(api_key(key))).overall_code == (
                    R.OVER_LIMIT
                )
                # Token buckets: 80 of openai's 100 charged through the deployment leave too
                # few for a Consume of 60 on the token service.
                charged = await deployment.ShouldRateLimit(token_request("user-1", 80))
                assert charged.overall_code == R.OK
                request = pb.ConsumeRequest(user_id="user-1", provider="openai", tokens=60)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await svc.stub.Consume(request, metadata=svc.auth())
                assert reason(info.value) == "RATE_LIMITED"
        finally:
            await server.stop(0)
            await built.close()
