"""The mesh the way users reach it: HTTP/JSON and grpcurl through Envoy's one port."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e


def call(
    gateway: Gateway,
    method: str,
    path: str,
    body: object | bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, parsed JSON body) of one HTTP request through the gateway."""
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        gateway.http + path,
        data=data,
        method=method,
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw, head = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        status, raw, head = error.code, error.read(), dict(error.headers)
    return status, {k.lower(): v for k, v in head.items()}, json.loads(raw) if raw else None


def register(gateway: Gateway) -> dict[str, Any]:
    name = f"u{uuid.uuid4().hex[:10]}"
    status, _, body = call(
        gateway,
        "POST",
        "/api/v1/auth/register",
        {"username": name, "email": f"{name}@example.com", "password": "correct horse"},
    )
    assert status == 200, body
    body["password"] = "correct horse"
    return dict(body)


def test_register_login_and_api_key_lifecycle_over_http(gateway: Gateway) -> None:
    user = register(gateway)
    assert set(user) >= {"userId", "username", "token", "roles", "expiresAt"}
    assert user["roles"] == ["USER"]

    status, _, login = call(
        gateway,
        "POST",
        "/api/v1/auth/login",
        {"username": user["username"], "password": "correct horse"},
    )
    assert status == 200
    assert login["userId"] == user["userId"]
    auth = {"authorization": f"Bearer {login['token']}"}

    status, _, created = call(
        gateway,
        "POST",
        "/api/v1/auth/api-keys",
        {"userId": user["userId"], "name": "ci", "expiresAt": "2099-01-01T00:00:00Z"},
        auth,
    )
    assert status == 200, created
    assert created["apiKey"].startswith("lt_")
    assert created["expiresAt"] == "2099-01-01T00:00:00Z"

    status, _, listed = call(
        gateway, "GET", f"/api/v1/auth/api-keys?userId={user['userId']}", headers=auth
    )
    assert status == 200
    assert [k["id"] for k in listed["apiKeys"]] == [created["id"]]
    assert created["apiKey"] not in json.dumps(listed)

    status, _, validated = call(
        gateway, "GET", "/api/v1/auth/api-keys/validate", headers={"x-api-key": created["apiKey"]}
    )
    assert status == 200
    assert validated["userId"] == user["userId"]

    status, _, revoked = call(
        gateway,
        "DELETE",
        f"/api/v1/auth/api-keys?userId={user['userId']}&apiKeyId={created['id']}",
        headers=auth,
    )
    assert status == 200
    assert revoked["apiKeyId"] == created["id"]
    status, _, listed = call(
        gateway, "GET", f"/api/v1/auth/api-keys?userId={user['userId']}", headers=auth
    )
    assert listed["apiKeys"] == []
    status, _, rejected = call(
        gateway, "GET", "/api/v1/auth/api-keys/validate", headers={"x-api-key": created["apiKey"]}
    )
    assert status == 401
    assert rejected["message"] == "invalid api key"


@pytest.mark.parametrize("path", ["/oauth2/jwks", "/.well-known/jwks.json"])
def test_jwks_is_served_at_both_paths(gateway: Gateway, path: str) -> None:
    status, _, jwks = call(gateway, "GET", path)
    assert status == 200
    key = jwks["keys"][0]
    assert key["kty"] == "RSA"
    assert key["alg"] == "RS256"
    assert key["kid"]
    assert key["n"]


def test_organizations_over_http(gateway: Gateway) -> None:
    owner, member = register(gateway), register(gateway)
    auth = {"authorization": f"Bearer {owner['token']}"}
    status, _, created = call(
        gateway, "POST", "/api/v1/auth/orgs", {"name": f"org-{uuid.uuid4().hex[:8]}"}, auth
    )
    assert status == 200
    org_id = created["organization"]["id"]
    status, _, added = call(
        gateway, "POST", f"/api/v1/auth/orgs/{org_id}/members", {"userId": member["userId"]}, auth
    )
    assert status == 200
    assert added["member"]["role"] == "MEMBER"
    status, _, members = call(gateway, "GET", f"/api/v1/auth/orgs/{org_id}/members", headers=auth)
    assert sorted(m["userId"] for m in members["members"]) == sorted(
        [owner["userId"], member["userId"]]
    )
    status, _, _removed = call(
        gateway, "DELETE", f"/api/v1/auth/orgs/{org_id}/members/{member['userId']}", headers=auth
    )
    assert status == 200


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"username", "email", "password"}),
        (
            {"username": "valid_name", "email": "not-an-email", "password": "correct horse"},
            {"email"},
        ),
        ({"username": "valid_name", "email": "ok@example.com", "password": "short"}, {"password"}),
    ],
)
def test_bad_registration_is_400_with_field_violations(
    gateway: Gateway, body: dict[str, str], fields: set[str]
) -> None:
    status, headers, error = call(gateway, "POST", "/api/v1/auth/register", body)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    (bad_request,) = [d for d in error["details"] if d["@type"].endswith("BadRequest")]
    assert {v["field"] for v in bad_request["fieldViolations"]} == fields


def test_malformed_json_is_400_with_json_body(gateway: Gateway) -> None:
    status, headers, error = call(gateway, "POST", "/api/v1/auth/register", b'{"username": ')
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert error["code"] == 3  # google.rpc.Code INVALID_ARGUMENT (docs/api-compatibility.md)
    assert error["message"]


def test_unknown_path_is_404_with_json_body(gateway: Gateway) -> None:
    status, headers, error = call(gateway, "GET", "/api/v1/nothing-here")
    assert status == 404
    assert headers["content-type"].startswith("application/json")
    assert "nothing-here" in error["message"]


def test_duplicate_registration_is_409(gateway: Gateway) -> None:
    user = register(gateway)
    status, _, error = call(
        gateway,
        "POST",
        "/api/v1/auth/register",
        {"username": user["username"], "email": "other@example.com", "password": "correct horse"},
    )
    assert status == 409
    assert error["details"][0]["reason"] == "USERNAME_TAKEN"


def test_wrong_password_and_unknown_user_look_the_same(gateway: Gateway) -> None:
    user = register(gateway)
    answers = [
        call(gateway, "POST", "/api/v1/auth/login", {"username": name, "password": "wrong pass"})
        for name in (user["username"], "no_such_user")
    ]
    assert [a[0] for a in answers] == [401, 401]
    assert answers[0][2] == answers[1][2]


def test_protected_call_without_token_is_401_and_other_users_keys_403(gateway: Gateway) -> None:
    alice, bob = register(gateway), register(gateway)
    status, _, _ = call(gateway, "GET", f"/api/v1/auth/api-keys?userId={alice['userId']}")
    assert status == 401
    status, _, _ = call(
        gateway,
        "GET",
        f"/api/v1/auth/api-keys?userId={alice['userId']}",
        headers={"authorization": f"Bearer {bob['token']}"},
    )
    assert status == 403


def test_every_reshaped_rest_path_reaches_its_rpc(gateway: Gateway) -> None:
    user = register(gateway)
    auth = {"authorization": f"Bearer {user['token']}"}
    status, _, answer = call(gateway, "GET", "/api/v1/tokens/status")
    assert status == 200
    assert answer["status"] == "ok"
    consume = {"userId": user["userId"], "provider": "openai", "tokens": 5, "prompt": "hi"}
    # Every reshaped REST path reaches its RPC (the provider stubs: test_provider_stubs.py); an
    # unknown body field would be a 400 from the transcoder, so the JSON names are checked too.
    # The token RPCs answer (tests/e2e/test_token_consume.py), and so does analytics.
    for method, path, body, expected in [
        ("POST", "/api/v1/tokens/reservations", {**consume, "ttl": "30s"}, 200),
        ("POST", "/api/v1/tokens/reservations/r1/settle", {"actualTokens": 3}, 404),
        ("POST", "/api/v1/tokens/reservations/r1/release", {}, 404),
        ("GET", f"/api/v1/tokens/quota?userId={user['userId']}&provider=openai", None, 200),
        ("GET", "/api/v1/analytics/usage?provider=openai", None, 200),
    ]:
        status, _, answer = call(gateway, method, path, body, auth)
        assert status == expected, (path, answer)
    status, _, answer = call(
        gateway, "POST", "/api/v1/tokens/consume", {**consume, "idempotencyKey": "k1"}, auth
    )
    assert status == 200, answer
    assert answer["providerResponse"]["provider"] == "openai"


def test_analytics_queries_over_http_keep_the_original_names_and_scope(gateway: Gateway) -> None:
    me, other = register(gateway), register(gateway)
    auth = {"authorization": f"Bearer {me['token']}"}
    status, _, report = call(
        gateway, "GET", "/api/v1/analytics/report?provider=openai&windowMinutes=5&limit=9", None,
        auth,
    )  # fmt: skip
    assert status == 200, report
    assert {"provider", "windowStart", "windowEnd", "sampleLimit", "userId"} <= set(report)
    assert (report["sampleLimit"], report["userId"]) == (9, me["userId"])
    status, _, anomalies = call(
        gateway, "GET", "/api/v1/analytics/anomalies?provider=openai&baselineWindows=2", None, auth
    )
    assert status == 200, anomalies
    assert anomalies["baselineWindows"] == 2
    for path in (
        "/api/v1/analytics/series?provider=openai&resolution=RESOLUTION_HOUR",
        "/api/v1/analytics/providers?windowMinutes=60",
        "/api/v1/analytics/purchases?limit=5",
        "/api/v1/analytics/usage?provider=openai&limit=3",
    ):
        status, _, answer = call(gateway, "GET", path, None, auth)
        assert status == 200, (path, answer)
    status, _, series = call(
        gateway, "GET", "/api/v1/analytics/series?provider=openai&resolution=RESOLUTION_DAY",
        None, auth,
    )  # fmt: skip
    assert len(series["points"]) == 61
    status, _, denied = call(
        gateway, "GET", f"/api/v1/analytics/report?provider=openai&userId={other['userId']}",
        None, auth,
    )  # fmt: skip
    assert status == 403, denied
    status, _, bad = call(gateway, "GET", "/api/v1/analytics/series?provider=openai", None, auth)
    assert status == 400, bad
    fields = [v["field"] for d in bad["details"] for v in d.get("fieldViolations", ())]
    assert fields == ["resolution"]


def grpcurl_run(grpcurl: Path, gateway: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(grpcurl), "-plaintext", *args], capture_output=True, text=True, timeout=30
    )


def test_grpcurl_lists_services_through_the_gateway_port(grpcurl: Path, gateway: Gateway) -> None:
    listed = grpcurl_run(grpcurl, gateway, gateway.grpc, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {
        "leaky.auth.v1.AuthService",
        "leaky.token.v1.TokenService",
        "leaky.analytics.v1.AnalyticsService",
        "leaky.provider.v1.ProviderService",
    } <= services


def test_grpcurl_calls_auth_through_the_gateway(grpcurl: Path, gateway: Gateway) -> None:
    name = f"g{uuid.uuid4().hex[:10]}"
    registered = grpcurl_run(
        grpcurl,
        gateway,
        "-d",
        json.dumps({"username": name, "email": f"{name}@example.com", "password": "correct horse"}),
        gateway.grpc,
        "leaky.auth.v1.AuthService/Register",
    )
    assert registered.returncode == 0, registered.stderr
    user = json.loads(registered.stdout)
    logged_in = grpcurl_run(
        grpcurl,
        gateway,
        "-d",
        json.dumps({"username": name, "password": "correct horse"}),
        gateway.grpc,
        "leaky.auth.v1.AuthService/Login",
    )
    # grpcurl prints proto field names (user_id), unlike the transcoder's JSON names.
    assert logged_in.returncode == 0
    assert json.loads(logged_in.stdout)["user_id"] == user["user_id"]
    token = json.loads(logged_in.stdout)["token"]
    listed = grpcurl_run(
        grpcurl,
        gateway,
        "-H",
        f"authorization: Bearer {token}",
        "-d",
        json.dumps({"userId": user["user_id"]}),
        gateway.grpc,
        "leaky.auth.v1.AuthService/ListApiKeys",
    )
    assert listed.returncode == 0, listed.stderr


def test_grpcurl_error_carries_status_and_details(grpcurl: Path, gateway: Gateway) -> None:
    result = grpcurl_run(
        grpcurl,
        gateway,
        "-d",
        json.dumps({"username": "x"}),
        gateway.grpc,
        "leaky.auth.v1.AuthService/Register",
    )
    assert result.returncode != 0
    assert "InvalidArgument" in result.stdout + result.stderr
    assert "BadRequest" in result.stdout + result.stderr
