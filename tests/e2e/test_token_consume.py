"""The token API as an HTTP client meets it through Envoy: 429 with every rate-limit header,
user and org quotas, reservations, org membership checked with auth now, and ShouldRateLimit
by grpcurl on the mesh's token port (never through the gateway)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from leaky_tokens.topology import slugs
from tests.e2e.conftest import Gateway
from tests.e2e.test_gateway import call, register
from tests.e2e.test_token_rls_grpcurl import should_rate_limit
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

# The shipped policy: openai's bucket holds 2000 tokens leaking 20/s; USER gets 100000 a day.
CAPACITY = 2000


def bearer(user: dict[str, Any]) -> dict[str, str]:
    return {"authorization": f"Bearer {user['token']}"}


def consume(
    gateway: Gateway, user: dict[str, Any], tokens: int, provider: str = "openai", org: str = ""
) -> tuple[int, dict[str, str], Any]:
    """One POST /api/v1/tokens/consume as `user` (for the org `org` when given)."""
    body = {"userId": user["userId"], "provider": provider, "tokens": tokens}
    if org:
        body["orgId"] = org
    return call(gateway, "POST", "/api/v1/tokens/consume", body, bearer(user))


def fill_bucket(gateway: Gateway, user: dict[str, Any]) -> None:
    """Take the whole openai bucket by consuming (the provider stubs answer each call)."""
    for _ in range(4):
        status, headers, answer = consume(gateway, user, 500)
        assert status == 200, answer
        assert answer["allowed"] is True
        assert headers["x-ratelimit-limit"] == str(CAPACITY)  # on allowed answers too


def create_org(gateway: Gateway, owner: dict[str, Any], *members: dict[str, Any]) -> str:
    """A new organization of `owner` with `members` added; its id."""
    name = f"org-{uuid.uuid4().hex[:8]}"
    status, _, created = call(gateway, "POST", "/api/v1/auth/orgs", {"name": name}, bearer(owner))
    assert status == 200, created
    org_id: str = created["organization"]["id"]
    for member in members:
        path = f"/api/v1/auth/orgs/{org_id}/members"
        status, _, added = call(gateway, "POST", path, {"userId": member["userId"]}, bearer(owner))
        assert status == 200, added
    return org_id


def test_consume_until_429_with_retry_after_x_ratelimit_and_ratelimit_headers(
    gateway: Gateway,
) -> None:
    user = register(gateway)
    fill_bucket(gateway, user)
    status, headers, answer = consume(gateway, user, 500)
    assert status == 429, answer
    reasons = [d["reason"] for d in answer["details"] if "reason" in d]
    assert reasons == ["RATE_LIMITED"]
    (retry,) = [d for d in answer["details"] if d["@type"].endswith("RetryInfo")]
    (decision,) = [d for d in answer["details"] if d["@type"].endswith("LimitDecision")]
    bucket = next(s for s in decision["limits"] if s["level"] == "LIMIT_LEVEL_USER_BUCKET")
    assert bucket["code"] == "LIMIT_CODE_OVER_LIMIT"
    assert bucket["limit"] == str(CAPACITY)
    assert int(headers["retry-after"]) >= 1
    assert float(retry["retryDelay"].rstrip("s")) > 0
    assert headers["x-ratelimit-limit"] == str(CAPACITY)
    assert int(headers["x-ratelimit-remaining"]) < 500
    assert int(headers["x-ratelimit-reset"]) >= 1
    assert headers["ratelimit-policy"].startswith(f'"openai/user-bucket";q={CAPACITY};w=100')
    assert re.match(r'^"openai/user-bucket";r=\d+;t=\d+', headers["ratelimit"])
    assert '"openai/user-quota";q=100000;w=86400' in headers["ratelimit-policy"]
    assert headers["x-request-id"]


def test_quota_shows_the_window_and_the_purchased_balance_apart(gateway: Gateway) -> None:
    user = register(gateway)
    fill_bucket(gateway, user)
    path = f"/api/v1/tokens/quota?userId={user['userId']}&provider=openai"
    status, _, quota = call(gateway, "GET", path, headers=bearer(user))
    assert status == 200, quota
    assert (quota["windowAllowance"], quota["windowUsed"]) == ("100000", str(CAPACITY))
    assert quota["windowRemaining"] == str(100000 - CAPACITY)
    assert quota.get("purchasedBalance", "0") == "0"
    assert quota["tier"] == "USER"
    assert quota["windowUnit"] == "LIMIT_UNIT_DAY"


def test_org_quota_counts_every_member_and_keeps_the_purchased_balance_apart(
    gateway: Gateway,
) -> None:
    owner, member, stranger = register(gateway), register(gateway), register(gateway)
    org_id = create_org(gateway, owner, member)
    for user, tokens in ((owner, 300), (member, 200)):
        status, _, answer = consume(gateway, user, tokens, provider="qwen", org=org_id)
        assert status == 200, answer
    path = f"/api/v1/tokens/quota/org?orgId={org_id}&provider=qwen"
    status, _, quota = call(gateway, "GET", path, headers=bearer(member))
    assert status == 200, quota
    # The shipped policy's org pool: 1,000,000 tokens a day, apart from any purchased balance.
    assert (quota["windowAllowance"], quota["windowUsed"]) == ("1000000", "500")
    assert quota["windowRemaining"] == str(1_000_000 - 500)
    assert quota.get("purchasedBalance", "0") == "0"
    assert quota["windowUnit"] == "LIMIT_UNIT_DAY"
    # Consumed for the org, the member's share within it was charged: their own window
    # outside any org is untouched (key_layout.py keeps the two apart).
    mine = f"/api/v1/tokens/quota?userId={member['userId']}&provider=qwen"
    status, _, own = call(gateway, "GET", mine, headers=bearer(member))
    assert status == 200, own
    assert (own["windowAllowance"], own.get("windowUsed", "0")) == ("100000", "0")
    status, _, refused = call(gateway, "GET", path, headers=bearer(stranger))
    assert status == 403, refused
    assert [d["reason"] for d in refused["details"] if "reason" in d] == ["NOT_ORG_MEMBER"]


def test_reserve_settle_and_release_over_http(gateway: Gateway) -> None:
    user = register(gateway)
    body = {"userId": user["userId"], "provider": "qwen", "tokens": 300, "ttl": "60s"}
    status, _, held = call(gateway, "POST", "/api/v1/tokens/reservations", body, bearer(user))
    assert status == 200, held
    rid = held["reservation"]["reservationId"]
    status, _, settled = call(
        gateway,
        "POST",
        f"/api/v1/tokens/reservations/{rid}/settle",
        {"actualTokens": 120},
        bearer(user),
    )
    assert status == 200, settled
    assert (settled["refundedTokens"], settled["reservation"]["state"]) == (
        "180",
        "RESERVATION_STATE_SETTLED",
    )
    status, _, again = call(
        gateway, "POST", f"/api/v1/tokens/reservations/{rid}/release", {}, bearer(user)
    )
    assert status == 400, again  # FAILED_PRECONDITION: it was settled
    assert [d["reason"] for d in again["details"] if "reason" in d] == ["RESERVATION_SETTLED"]


def test_a_removed_org_member_is_refused_within_the_cache_bound(gateway: Gateway) -> None:
    owner, member, stranger = register(gateway), register(gateway), register(gateway)
    org_id = create_org(gateway, owner, member)

    def reasons(answer: Any) -> list[str]:
        return [d["reason"] for d in answer["details"] if "reason" in d]

    status, _, answer = consume(gateway, stranger, 1, provider="gemini", org=org_id)
    assert status == 403, answer
    assert reasons(answer) == ["NOT_ORG_MEMBER"]
    status, headers, answer = consume(gateway, member, 1, provider="gemini", org=org_id)
    assert status == 200, answer
    assert '"gemini/org-bucket"' in headers["ratelimit-policy"]  # the org's pool applied
    status, _, _ = call(
        gateway,
        "DELETE",
        f"/api/v1/auth/orgs/{org_id}/members/{member['userId']}",
        headers=bearer(owner),
    )
    assert status == 200

    def refused() -> Any:
        status, _, answer = consume(gateway, member, 1, provider="gemini", org=org_id)
        return answer if status == 403 else None

    # LEAKY_TOKEN_MEMBERSHIP_CACHE_SECONDS (5 s by default) bounds how long the removal takes;
    # the wait is a deadline for the failure message, not an assertion on time.
    answer = wait_until(refused, 30, what="the removed member is refused", interval=0.5)
    assert reasons(answer) == ["NOT_ORG_MEMBER"]
    # Without the org the former member still consumes as themself.
    status, _, answer = consume(gateway, member, 1, provider="gemini")
    assert status == 200, answer


def test_grpcurl_should_rate_limit_on_the_mesh_charges_the_bucket_http_consume_meets(
    grpcurl: Path, gateway: Gateway
) -> None:
    user = register(gateway)
    token_port = gateway.grpc_ports[slugs().index("token")]
    # The shipped policy's descriptor provider=openai/user_id=<id> charges the hits as LLM
    # tokens to that user's openai bucket (2000 tokens, 20/s): Envoy and Consume share it.
    body = {
        "domain": "leaky",
        "hitsAddend": CAPACITY,
        "descriptors": [
            {
                "entries": [
                    {"key": "provider", "value": "openai"},
                    {"key": "user_id", "value": user["userId"]},
                ]
            }
        ],
    }
    address = f"127.0.0.1:{token_port}"
    first = should_rate_limit(grpcurl, address, body)
    assert first["overall_code"] == "OK", first
    assert first["statuses"][0]["limit_remaining"] == 0
    second = should_rate_limit(grpcurl, address, body)  # a full bucket leaks 2000 in 100 s
    assert second["overall_code"] == "OVER_LIMIT", second
    status, headers, answer = consume(gateway, user, 100)
    assert status == 429, answer
    assert int(headers["x-ratelimit-remaining"]) < 100


def test_the_gateway_port_does_not_route_should_rate_limit(gateway: Gateway) -> None:
    # Envoy's filter calls it without a user JWT: only the token port serves it (ADR 0025).
    request = rls_pb2.RateLimitRequest(domain="leaky")
    request.descriptors.add().entries.add(key="user_id", value="anyone")
    with grpc.insecure_channel(gateway.grpc) as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ShouldRateLimit(request, timeout=10)
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED, info.value
