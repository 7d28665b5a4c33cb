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
    settings = AuthSettings()
    for _ in range(settings.login_free_failures):
        status, _, _ = call(gateway, "POST", "/api/v1/auth/login", wrong)
        assert status == 401
    # Now each retry must wait (1 s, doubling per failure). On a loaded machine the first wait
    # can pass before the next request arrives: wrong passwords go on (each failure doubles
    # the wait) until one is refused, well before the lockout.
    status, failures = 401, settings.login_free_failures
    while status == 401 and failures < settings.login_lockout_failures - 1:
        status, _, _ = call(gateway, "POST", "/api/v1/auth/login", wrong)
        failures += status == 401
    assert status == 429
    # Throttled, even the right password waits.
    right = {"username": user["username"], "password": user["password"]}
    status, headers, body = call(gateway, "POST", "/api/v1/auth/login", right)
    assert status == 429, body
    assert [d["reason"] for d in body["details"] if "reason" in d] == ["LOGIN_THROTTLED"]
    (retry,) = [d for d in body["details"] if d.get("@type", "").endswith("RetryInfo")]
    seconds = int(headers["retry-after"])
    # The wait is what is left of 2^k s after the last failure, rounded up to whole seconds.
    assert 1 <= seconds <= 2 ** (failures - settings.login_free_failures)
    assert retry["retryDelay"] == f"{seconds}s"
    assert headers["x-request-id"]
