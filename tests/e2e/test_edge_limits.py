"""Edge limits and policy through `leaky up` (ADR 0042): Envoy's ratelimit filter asking the
ratelimit deployment (ADR 0047), 429 with the rate-limit headers, other routes and clients
untouched; 413 for large bodies; CORS preflights; unknown paths 404."""

from __future__ import annotations

import http.client
import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from leaky.token.v1 import token_pb2, token_pb2_grpc
from leaky_tokens.token.adapters.token_metrics import Rpc
from leaky_tokens.token.rls_wiring import SHIPPED_POLICY
from tests.e2e.conftest import Gateway, leaky_up
from tests.support.net import free_port

pytestmark = pytest.mark.e2e

STATUS_METHOD = "/leaky.token.v1.TokenService/GetStatus"
STATUS_LIMIT = 3  # per client address and minute, this module's policy only
QUOTA_METHOD = "/leaky.token.v1.TokenService/GetQuota"
# A read an API key may make (ADR 0048: a key cannot list API keys).
ORGS_METHOD = "/leaky.auth.v1.AuthService/ListMyOrganizations"
PER_CALLER_LIMIT = 3  # per user (GetQuota) and per API key (ListMyOrganizations) and minute
ORIGIN = "https://app.example.com"
MAX_BODY = 4096
# A second client: Linux routes all of 127.0.0.0/8 to loopback, so a socket bound to
# 127.0.0.2 reaches Envoy on 127.0.0.1 as another client address.
OTHER_CLIENT = "127.0.0.2"


def _policy(path: Path) -> Path:
    """The shipped policy plus a tight edge limit on GetStatus (an ERL entry of its own)."""
    policy = yaml.safe_load(SHIPPED_POLICY.read_text())
    policy["rate_limits"]["descriptors"].append(
        {
            "key": "method",
            "value": STATUS_METHOD,
            "descriptors": [
                {
                    "key": "remote_address",
                    "rate_limit": {
                        "name": "edge-status",
                        "unit": "minute",
                        "requests_per_unit": STATUS_LIMIT,
                    },
                }
            ],
        }
    )
    # Per identified caller: the headers the auth filters set (ADR 0041) are descriptors.
    for method, key, name in (
        (QUOTA_METHOD, "user_id", "edge-quota-user"),
        (ORGS_METHOD, "api_key_id", "edge-orgs-api-key"),
    ):
        limit = {"name": name, "unit": "minute", "requests_per_unit": PER_CALLER_LIMIT}
        policy["rate_limits"]["descriptors"].append(
            {"key": "method", "value": method, "descriptors": [{"key": key, "rate_limit": limit}]}
        )
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A mesh of its own: the tight GetStatus limit, CORS for one origin, a small body limit."""
    port, admin = free_port(), free_port()
    data = tmp_path_factory.mktemp("edge")
    (data / "mesh").mkdir()
    env = {
        "LEAKY_TOKEN_POLICY_FILE": str(_policy(data / "policy.yaml")),
        "LEAKY_GATEWAY_CORS_ALLOWED_ORIGINS": ORIGIN,
        "LEAKY_GATEWAY_MAX_REQUEST_BYTES": str(MAX_BODY),
        # Fail-open after 200 ms by default: on a loaded CI box an answer could come without
        # the headers these tests read. The timeout is not what they test.
        "LEAKY_GATEWAY_RATELIMIT_TIMEOUT_MS": "5000",
    }
    with leaky_up(
        ["--port", str(port), "--admin-port", str(admin)],
        data / "mesh",
        f"http://127.0.0.1:{port}",
        ("/oauth2/jwks",),  # not GetStatus: its budget is the test's
        env=env,
    ) as running:
        yield running


def request(
    gateway: Gateway,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, every header line as sent, body): duplicates are kept, names lower-cased."""
    host, port = gateway.grpc.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        lines = [(k.lower(), v) for k, v in response.getheaders()]
        return response.status, lines, response.read()
    finally:
        connection.close()


def one(lines: list[tuple[str, str]], name: str) -> str:
    """The single value of a header (fails on none or several)."""
    (value,) = [v for k, v in lines if k == name]
    return value


def rls_decisions(gateway: Gateway, slug: str) -> float:
    """ShouldRateLimit's request-count decisions (leaky_token_decisions, every outcome) as
    `slug`'s /metrics exports them."""
    url = f"http://127.0.0.1:{gateway.metrics_ports[slug]}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    rpc = f'rpc="{Rpc.SHOULD_RATE_LIMIT.value}"'
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("leaky_token_decisions_total{") and rpc in line
    )


def test_envoy_asks_the_ratelimit_deployment_not_the_token_process(edge: Gateway) -> None:
    # ADR 0047: the per-request ShouldRateLimit goes to its own process (the token service's
    # code with LEAKY_TOKEN_SERVE=rls), so Consume's process no longer pays for it.
    rls_before, token_before = rls_decisions(edge, "ratelimit"), rls_decisions(edge, "token")
    for _ in range(3):
        status, _, _ = request(edge, "GET", "/oauth2/jwks")
        assert status == 200
    assert rls_decisions(edge, "ratelimit") >= rls_before + 3
    assert rls_decisions(edge, "token") == token_before


def test_a_route_over_its_edge_limit_gets_429_with_every_header(edge: Gateway) -> None:
    # The window is a clock minute: a new one may start mid-loop, so at most twice the
    # limit passes before the refusal.
    statuses = []
    for _ in range(2 * STATUS_LIMIT + 2):
        status, lines, body = request(edge, "GET", "/api/v1/tokens/status")
        statuses.append(status)
        if status == 429:
            break
    assert statuses[-1] == 429, statuses
    assert set(statuses[:-1]) == {200}
    error = json.loads(body)
    assert error["code"] == 8  # RESOURCE_EXHAUSTED
    assert [d["reason"] for d in error["details"]] == ["EDGE_RATE_LIMITED"]
    assert one(lines, "content-type") == "application/json"
    assert one(lines, "x-ratelimit-limit") == str(STATUS_LIMIT)
    assert one(lines, "x-ratelimit-remaining") == "0"
    reset = int(one(lines, "x-ratelimit-reset"))
    assert 0 <= reset <= 60
    assert int(one(lines, "retry-after")) == max(1, reset)
    assert one(lines, "ratelimit-policy") == f'"edge-status";q={STATUS_LIMIT};w=60'
    assert one(lines, "ratelimit") == f'"edge-status";r=0;t={reset}'
    assert not [k for k, _ in lines if k.startswith("x-envoy-ratelimited")]

    # Another route from the same client: its own (generous) budget.
    status, lines, _ = request(edge, "GET", "/oauth2/jwks")
    assert status == 200
    assert one(lines, "ratelimit-policy") == '"edge-address";q=1000;w=1'
    # The same route from another client address: a budget of its own.
    status, lines, _ = request(edge, "GET", "/api/v1/tokens/status", source=OTHER_CLIENT)
    assert status == 200
    assert one(lines, "ratelimit-policy") == f'"edge-status";q={STATUS_LIMIT};w=60'
    assert int(one(lines, "x-ratelimit-remaining")) < STATUS_LIMIT


def test_native_grpc_counts_on_the_same_method_and_gets_resource_exhausted(
    edge: Gateway,
) -> None:
    codes = []
    with grpc.insecure_channel(edge.grpc) as channel:
        stub = token_pb2_grpc.TokenServiceStub(channel)
        for _ in range(2 * STATUS_LIMIT + 2):
            try:
                stub.GetStatus(token_pb2.GetStatusRequest(), timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
                refused = error
                break
    assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED, codes
    pairs = [*(refused.trailing_metadata() or ()), *(refused.initial_metadata() or ())]  # type: ignore[attr-defined]
    metadata = {str(k): str(v) for k, v in pairs}
    assert metadata["x-ratelimit-limit"] == str(STATUS_LIMIT)
    assert metadata["ratelimit"].startswith('"edge-status";r=0;')


def _register(edge: Gateway) -> dict[str, Any]:
    name = f"u{uuid.uuid4().hex[:10]}"
    body = {"username": name, "email": f"{name}@example.com", "password": "correct horse"}
    status, _, raw = request(edge, "POST", "/api/v1/auth/register", json.dumps(body).encode())
    assert status == 200, raw
    return dict(json.loads(raw))


def test_a_consume_answer_carries_one_set_of_x_ratelimit_and_every_limit_in_ratelimit(
    edge: Gateway,
) -> None:
    user = _register(edge)
    body = {"userId": user["userId"], "provider": "openai", "tokens": 10, "prompt": "hi"}
    auth = {"authorization": f"Bearer {user['token']}", "content-type": "application/json"}
    status, lines, raw = request(
        edge, "POST", "/api/v1/tokens/consume", json.dumps(body).encode(), auth
    )
    assert status == 200, raw
    # The service's bucket decided the call: its X-RateLimit-* are the ones kept.
    assert one(lines, "x-ratelimit-limit") == "2000"
    assert one(lines, "x-ratelimit-remaining") == "1990"
    policies = one(lines, "ratelimit-policy").split(", ")
    assert policies[0].startswith('"openai/user-bucket";q=2000')
    assert '"edge-address";q=1000;w=1' in policies
    assert len(one(lines, "ratelimit").split(", ")) == len(policies)


def test_a_body_over_the_limit_is_413_in_the_status_shape(edge: Gateway) -> None:
    big = json.dumps({"username": "x" * MAX_BODY, "password": "y"}).encode()
    status, lines, raw = request(edge, "POST", "/api/v1/auth/login", big)
    assert status == 413
    assert one(lines, "content-type") == "application/json"
    assert json.loads(raw) == {"code": 3, "message": "Payload Too Large", "details": []}
    # Just under the limit it reaches the service (and fails on its own terms).
    small = json.dumps({"username": "x" * 100, "password": "wrong password"}).encode()
    status, _, _ = request(edge, "POST", "/api/v1/auth/login", small)
    assert status == 401


def test_cors_preflights_and_answers_for_the_configured_origin_only(edge: Gateway) -> None:
    asking = {"origin": ORIGIN, "access-control-request-method": "POST"}
    status, lines, _ = request(edge, "OPTIONS", "/api/v1/tokens/consume", headers=asking)
    assert status == 200
    assert one(lines, "access-control-allow-origin") == ORIGIN
    assert "POST" in one(lines, "access-control-allow-methods")
    assert "authorization" in one(lines, "access-control-allow-headers")
    # A path template with a variable, and another origin: answered, without the grant.
    other = {**asking, "origin": "https://evil.example.com"}
    status, lines, _ = request(edge, "OPTIONS", "/api/v1/tokens/purchase/abc", headers=other)
    assert status == 200
    assert not [k for k, _ in lines if k == "access-control-allow-origin"]
    # The actual call: the origin granted and the rate-limit headers readable by the page.
    status, lines, _ = request(edge, "GET", "/oauth2/jwks", headers={"origin": ORIGIN})
    assert status == 200
    assert one(lines, "access-control-allow-origin") == ORIGIN
    assert "ratelimit" in one(lines, "access-control-expose-headers")
    # OPTIONS without a preflight's headers is what it was: 405 where no binding takes it.
    status, lines, _ = request(edge, "OPTIONS", "/api/v1/tokens/consume")
    assert status == 405
    assert one(lines, "allow") == "POST"


def test_unknown_paths_are_404_and_not_counted(edge: Gateway) -> None:
    for path in ("/api/v1/nope", "/api/v1/tokens/nope"):
        status, lines, raw = request(edge, "GET", path)
        assert status == 404
        assert json.loads(raw)["code"] == 5
        assert not [k for k, _ in lines if k.startswith(("x-ratelimit", "ratelimit"))]
    # A preflight to a path the API does not serve is not answered as CORS either.
    asking = {"origin": ORIGIN, "access-control-request-method": "GET"}
    status, _, _ = request(edge, "OPTIONS", "/api/v1/nope", headers=asking)
    assert status == 404


def _until_refused(edge: Gateway, path: str, headers: dict[str, str]) -> list[int]:
    """Statuses of GETs on path until the first 429 (a clock minute may turn mid-loop: at most
    twice the limit passes first)."""
    statuses = []
    for _ in range(2 * PER_CALLER_LIMIT + 2):
        status, _, _ = request(edge, "GET", path, headers=headers)
        statuses.append(status)
        if status == 429:
            break
    return statuses


def test_edge_limits_count_per_verified_user(edge: Gateway) -> None:
    a, b = _register(edge), _register(edge)
    quota = "/api/v1/tokens/quota?userId={}&provider=openai"
    statuses = _until_refused(
        edge, quota.format(a["userId"]), {"authorization": f"Bearer {a['token']}"}
    )
    assert statuses[-1] == 429, statuses
    assert set(statuses[:-1]) == {200}, statuses
    # Same route and client address, another user: a budget of their own.
    status, lines, _ = request(
        edge, "GET", quota.format(b["userId"]), headers={"authorization": f"Bearer {b['token']}"}
    )
    assert status == 200
    assert int(one(lines, "x-ratelimit-remaining")) == PER_CALLER_LIMIT - 1
    # A client-sent identity header cannot move A's calls onto another count: Envoy drops it.
    forged = {"authorization": f"Bearer {a['token']}", "x-leaky-user-id": b["userId"]}
    status, _, _ = request(edge, "GET", quota.format(a["userId"]), headers=forged)
    assert status == 429


def test_edge_limits_count_per_api_key(edge: Gateway) -> None:
    user = _register(edge)
    auth = {"authorization": f"Bearer {user['token']}", "content-type": "application/json"}
    keys = []
    for name in ("one", "two"):
        body = json.dumps({"userId": user["userId"], "name": name}).encode()
        status, _, raw = request(edge, "POST", "/api/v1/auth/api-keys", body, auth)
        assert status == 200, raw
        keys.append(json.loads(raw)["apiKey"])
    path = "/api/v1/auth/orgs"
    statuses = _until_refused(edge, path, {"x-api-key": keys[0]})
    assert statuses[-1] == 429, statuses
    assert set(statuses[:-1]) == {200}, statuses
    # The owner's other key, and the owner's JWT (no key id), are not that key's count.
    status, _, _ = request(edge, "GET", path, headers={"x-api-key": keys[1]})
    assert status == 200
    status, _, _ = request(edge, "GET", path, headers={"authorization": auth["authorization"]})
    assert status == 200
