"""The token service as the bootstrap builds it on the stack's Redis (store_backend=redis)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from leaky.token.v1 import token_pb2 as pb
from leaky_tokens.stack.orchestrator import Stack
from leaky_tokens.stack.redis import Redis as RedisComponent
from tests.support.grpc_errors import reason, trailers
from tests.support.net import free_port
from tests.support.stack import component
from tests.support.token_service import redis_settings, token_service

pytestmark = pytest.mark.integration


async def test_consume_rate_limit_and_refund_on_redis(stack: Stack, tmp_path: Path) -> None:
    redis = component(stack, "redis")
    assert isinstance(redis, RedisComponent)
    settings = redis_settings(redis.url)
    async with token_service(tmp_path, **settings) as svc:
        request = pb.ConsumeRequest(user_id="user-1", provider="openai", tokens=60)
        await svc.stub.Consume(request, metadata=svc.auth())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await svc.stub.Consume(request, metadata=svc.auth())
        assert reason(info.value) == "RATE_LIMITED"
        assert trailers(info.value)["retry-after"] == "20"
        svc.provider.fail = grpc.StatusCode.UNAVAILABLE
        svc.clock.advance(seconds=60)  # drained
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await svc.stub.Consume(request, metadata=svc.auth())
        assert reason(info.value) == "PROVIDER_UNAVAILABLE"
        quota = await svc.stub.GetQuota(
            pb.GetQuotaRequest(user_id="user-1", provider="openai"), metadata=svc.auth()
        )
        assert quota.window_used == 60  # the refused call was refunded


async def test_an_unreachable_redis_sets_the_degraded_gauge_and_local_budget_answers(
    tmp_path: Path,
) -> None:
    settings: dict[str, Any] = {
        "store_backend": "redis",
        "store_redis_url": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        "store_failure_mode": "local_emergency",
        "store_timeout_ms": 200,
    }
    async with token_service(tmp_path, **settings) as svc:
        assert svc.sample("leaky_token_store_degraded", mode="local_emergency") == 0
        request = pb.ConsumeRequest(user_id="user-1", provider="openai", tokens=5)
        done = await svc.stub.Consume(request, metadata=svc.auth())
        assert done.allowed  # 10% of the 100-token bucket, on this instance alone
        assert svc.sample("leaky_token_store_degraded", mode="local_emergency") == 1
        assert svc.sample("leaky_token_store_degraded_transitions_total", to="degraded") == 1
        labels = {"rpc": "consume", "provider": "openai", "level": "user_bucket"}
        assert svc.sample("leaky_token_decisions_total", **labels, outcome="allowed") == 1
