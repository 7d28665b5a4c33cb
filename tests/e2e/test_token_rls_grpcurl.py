"""grpcurl calls ShouldRateLimit on a real token service process counting in the stack's Redis."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from leaky_tokens.stack.orchestrator import Stack
from leaky_tokens.stack.redis import Redis as RedisComponent
from tests.support.net import free_port
from tests.support.stack import component
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "rls-bench-leaky.yaml"
METHOD = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"


def listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


@pytest.fixture(scope="module")
def token_service(stack: Stack) -> Iterator[tuple[str, str, int]]:
    """`python -m leaky_tokens.token` on a free port, store_backend=redis on the stack's Redis
    under a key prefix of its own; yields (address, prefix, redis port)."""
    redis = component(stack, "redis")
    assert isinstance(redis, RedisComponent)
    port, prefix = free_port(), f"e2e{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "LEAKY_TOKEN_PORT": str(port),
        "LEAKY_TOKEN_METRICS_PORT": "0",
        "LEAKY_TOKEN_RLS_CONFIG": str(FIXTURE),
        "LEAKY_TOKEN_STORE_BACKEND": "redis",
        "LEAKY_TOKEN_STORE_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
        "LEAKY_TOKEN_STORE_KEY_PREFIX": prefix,
    }
    process = subprocess.Popen([sys.executable, "-m", "leaky_tokens.token"], env=env)
    try:
        wait_until(lambda: listening(port), 30, what="the token service", ignoring=(OSError,))
        yield f"127.0.0.1:{port}", prefix, redis.port
    finally:
        process.terminate()
        process.wait(timeout=15)
        with Redis(host="127.0.0.1", port=redis.port) as client:
            for key in client.scan_iter(match=f"{prefix}*"):
                client.delete(key)


def should_rate_limit(grpcurl: Path, address: str, body: dict[str, object]) -> dict[str, Any]:
    """One call by reflection; -emit-defaults prints OK (0) and keeps the proto's field names."""
    done = subprocess.run(
        [str(grpcurl), "-plaintext", "-emit-defaults", "-d", json.dumps(body), address, METHOD],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_grpcurl_should_rate_limit_counts_in_redis_until_over_limit(
    grpcurl: Path, token_service: tuple[str, str, int]
) -> None:
    address, prefix, redis_port = token_service
    key = uuid.uuid4().hex[:8]
    body = {
        "domain": "leaky",
        "hitsAddend": 4,
        "descriptors": [{"entries": [{"key": "api_key", "value": key}]}],
    }
    # The three calls must fall in one minute window (epoch-aligned, as upstream's).
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)
    answers = [should_rate_limit(grpcurl, address, body) for _ in range(3)]
    assert [a["overall_code"] for a in answers] == ["OK", "OK", "OVER_LIMIT"]
    first = answers[0]["statuses"][0]
    assert first["current_limit"] == {"requests_per_unit": 10, "unit": "MINUTE", "name": ""}
    assert first["limit_remaining"] == 6
    last: Any = answers[2]
    headers = {h["key"]: h["value"] for h in last["response_headers_to_add"]}
    assert headers["x-ratelimit-limit"] == "10"
    assert headers["x-ratelimit-remaining"] == "0"
    with Redis(host="127.0.0.1", port=redis_port) as client:
        counters = list(client.scan_iter(match=f"{prefix}rl:{{leaky}}api_key_{key}_*"))
        assert len(counters) == 1
        assert int(client.get(counters[0]) or 0) == 8  # the refused request counted nothing


def test_grpcurl_is_refused_a_request_without_descriptors(
    grpcurl: Path, token_service: tuple[str, str, int]
) -> None:
    address, _, _ = token_service
    done = subprocess.run(
        [str(grpcurl), "-plaintext", "-d", '{"domain": "leaky"}', address, METHOD],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "InvalidArgument" in done.stderr
    assert "descriptors" in done.stderr
