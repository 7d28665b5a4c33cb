"""The token API as an HTTP client meets it through Envoy: 429 with every rate-limit header,
quotas, reservations and org membership checked with auth now."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from tests.e2e.conftest import Gateway
from tests.e2e.test_gateway import call, register
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

# The shipped policy: openai's bucket holds 2000 tokens leaking 20/s; USER gets 100000 a day.
CAPACITY = 2000


def bearer(user: dict[str, Any]) -> dict[str, str]:
    return {"authorization": f"Bearer {user['token']}"}


def provider_answers(gateway: Gateway, user: dict[str, Any]) -> bool:
    """Whether the provider stubs are implemented in this build (Chat answers 200)."""
    status, _, _ = call(gateway, "POST", "/api/v1/openai/chat", {"prompt": "hi"}, bearer(user))
    return status == 200


def fill_bucket(gateway: Gateway, user: dict[str, Any], provider_ok: bool) -> None:
    """Take the whole openai bucket: by consuming when the provider answers, else by a
    reservation (the same levels, no provider call)."""
    body = {"userId": user["userId"], "provider": "openai"}
    if provider_ok:
        for _ in range(4):
            status, headers, answer = call(
                gateway, "POST", "/api/v1/tokens/consume", {**body, "tokens": 500}, bearer(user)
            )
            assert status == 200, answer
            assert answer["allowed"] is True
            assert headers["x-ratelimit-limit"] == str(CAPACITY)  # on allowed answers too
        return
    status, _, answer = call(
        gateway, "POST", "/api/v1/tokens/reservations", {**body, "tokens": CAPACITY}, bearer(user)
    )
    assert status == 200, answer
    assert answer["reservation"]["state"] == "RESERVATION_STATE_OPEN"


def test_consume_until_429_with_retry_after_x_ratelimit_and_ratelimit_headers(
    gateway: Gateway,
) -> None:
    user = register(gateway)
    fill_bucket(gateway, user, provider_answers(gateway, user))
    body = {"userId": user["userId"], "provider": "openai", "tokens": 500}
    status, headers, answer = call(gateway, "POST", "/api/v1/tokens/consume", body, bearer(user))
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
    fill_bucket(gateway, user, provider_answers(gateway, user))
    path = f"/api/v1/tokens/quota?userId={user['userId']}&provider=openai"
    status, _, quota = call(gateway, "GET", path, headers=bearer(user))
    assert status == 200, quota
    assert (quota["windowAllowance"], quota["windowUsed"]) == ("100000", str(CAPACITY))
    assert quota["windowRemaining"] == str(100000 - CAPACITY)
    assert quota.get("purchasedBalance", "0") == "0"
    assert quota["tier"] == "USER"
    assert quota["windowUnit"] == "LIMIT_UNIT_DAY"


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
    _, _, created = call(
        gateway,
        "POST",
        "/api/v1/auth/orgs",
        {"name": f"org-{uuid.uuid4().hex[:8]}"},
        bearer(owner),
    )
    org_id = created["organization"]["id"]
    call(
        gateway,
        "POST",
        f"/api/v1/auth/orgs/{org_id}/members",
        {"userId": member["userId"]},
        bearer(owner),
    )

    def reserve(user: dict[str, Any]) -> tuple[int, Any]:
        body = {"userId": user["userId"], "orgId": org_id, "provider": "gemini", "tokens": 1}
        status, _, answer = call(gateway, "POST", "/api/v1/tokens/reservations", body, bearer(user))
        return status, answer

    status, answer = reserve(stranger)
    assert status == 403, answer
    assert [d["reason"] for d in answer["details"] if "reason" in d] == ["NOT_ORG_MEMBER"]
    status, answer = reserve(member)
    assert status == 200, answer
    levels = {s["level"] for s in answer["limits"]}
    assert "LIMIT_LEVEL_ORG_BUCKET" in levels
    status, _, _ = call(
        gateway,
        "DELETE",
        f"/api/v1/auth/orgs/{org_id}/members/{member['userId']}",
        headers=bearer(owner),
    )
    assert status == 200
    # LEAKY_TOKEN_MEMBERSHIP_CACHE_SECONDS (5 s by default) bounds how long the removal takes.
    wait_until(lambda: reserve(member)[0] == 403, 15, what="the removed member is refused")
