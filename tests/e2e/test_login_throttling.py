"""Failed-login throttling as an HTTP client meets it: 429 with Retry-After through Envoy."""

from __future__ import annotations

import pytest

from leaky_tokens.auth.bootstrap import AuthSettings
from tests.e2e.conftest import Gateway
from tests.e2e.test_gateway import call, register

pytestmark = pytest.mark.e2e


def test_repeated_wrong_passwords_get_429_with_retry_after(gateway: Gateway) -> None:
    user = register(gateway)
    wrong = {"username": user["username"], "password": "wrong pass"}
    free = AuthSettings().login_free_failures
    for _ in range(free):
        status, _, _ = call(gateway, "POST", "/api/v1/auth/login", wrong)
        assert status == 401
    right = {"username": user["username"], "password": user["password"]}
    status, headers, body = call(gateway, "POST", "/api/v1/auth/login", right)
    assert status == 429, body
    assert [d["reason"] for d in body["details"] if "reason" in d] == ["LOGIN_THROTTLED"]
    (retry,) = [d for d in body["details"] if d.get("@type", "").endswith("RetryInfo")]
    assert retry["retryDelay"] == "1s"
    assert headers["retry-after"] == "1"
    assert headers["x-request-id"]
