"""Identity at the front door (ADR 0041): JWTs checked by Envoy, API keys through ext_authz,
identity headers no client can forge, and services that verify the caller themselves."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from leaky.token.v1 import token_pb2, token_pb2_grpc
from tests.e2e.conftest import Gateway
from tests.e2e.test_analytics import admin
from tests.e2e.test_gateway import call, register
from tests.support.jwks import current_signing_key
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

CONSUME = "/api/v1/tokens/consume"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def api_key(gateway: Gateway, user: dict[str, Any]) -> dict[str, Any]:
    status, _, body = call(
        gateway,
        "POST",
        "/api/v1/auth/api-keys",
        {"userId": user["userId"], "name": "e2e"},
        {"authorization": f"Bearer {user['token']}"},
    )
    assert status == 200, body
    return dict(body)


def consume(gateway: Gateway, user_id: str, headers: dict[str, str], tokens: int = 3) -> Any:
    return call(
        gateway,
        "POST",
        CONSUME,
        {"userId": user_id, "provider": "openai", "tokens": tokens},
        headers,
    )


def quota_used(gateway: Gateway, user: dict[str, Any]) -> int:
    status, _, body = call(
        gateway,
        "GET",
        f"/api/v1/tokens/quota?userId={user['userId']}&provider=openai",
        headers={"authorization": f"Bearer {user['token']}"},
    )
    assert status == 200, body
    return int(body["windowUsed"])


def signed(gateway: Gateway, user: dict[str, Any], **overrides: object) -> str:
    kid, key = current_signing_key(gateway.data_dir / "auth.db")
    now = datetime.now(UTC)
    claims = {
        "iss": "leaky-tokens-auth",
        "aud": "leaky-tokens",
        "sub": user["userId"],
        "roles": ["USER"],
        "orgs": [],
        "iat": now,
        "exp": now + timedelta(minutes=5),
        "jti": f"e2e-{time.monotonic_ns()}",
        **overrides,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def test_an_api_key_consumes_as_its_owner_through_envoy(gateway: Gateway) -> None:
    owner = register(gateway)
    key = api_key(gateway, owner)
    before = quota_used(gateway, owner)
    status, _, body = consume(gateway, owner["userId"], {"x-api-key": key["apiKey"]}, 7)
    assert status == 200, body
    assert body["allowed"] is True
    assert quota_used(gateway, owner) == before + 7


def test_an_api_key_cannot_act_for_another_user(gateway: Gateway) -> None:
    owner, other = register(gateway), register(gateway)
    key = api_key(gateway, owner)
    status, _, body = consume(gateway, other["userId"], {"x-api-key": key["apiKey"]})
    assert status == 403, body
    assert quota_used(gateway, other) == 0


def test_an_api_key_works_over_native_grpc_through_envoy(gateway: Gateway) -> None:
    owner = register(gateway)
    key = api_key(gateway, owner)
    with grpc.insecure_channel(gateway.grpc) as channel:
        stub = token_pb2_grpc.TokenServiceStub(channel)
        answer = stub.Consume(
            token_pb2.ConsumeRequest(user_id=owner["userId"], provider="openai", tokens=2),
            metadata=(("x-api-key", key["apiKey"]),),
            timeout=10,
        )
        assert answer.allowed
        with pytest.raises(grpc.RpcError) as refused:
            stub.Consume(
                token_pb2.ConsumeRequest(user_id=owner["userId"], provider="openai", tokens=2),
                metadata=(("x-api-key", "lt_not-a-key"),),
                timeout=10,
            )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def error_info(reason: str) -> dict[str, Any]:
    return {"@type": ERROR_INFO, "reason": reason, "domain": "leaky-tokens", "metadata": {}}


def expiring_api_key(gateway: Gateway, user: dict[str, Any]) -> dict[str, Any]:
    """A key of `user` that has expired (created to expire in 5 s, then waited for)."""
    soon = (datetime.now(UTC) + timedelta(seconds=5)).isoformat().replace("+00:00", "Z")
    status, _, key = call(
        gateway,
        "POST",
        "/api/v1/auth/api-keys",
        {"userId": user["userId"], "name": "e2e-expiring", "expiresAt": soon},
        {"authorization": f"Bearer {user['token']}"},
    )
    assert status == 200, key
    time.sleep(max(0.0, (datetime.fromisoformat(soon) - datetime.now(UTC)).total_seconds()))
    return dict(key)


@pytest.mark.parametrize(
    ("case", "reason", "message"),
    [
        ("invalid", "INVALID_API_KEY", "invalid api key"),
        ("expired", "API_KEY_EXPIRED", "api key expired"),
        ("empty", "MISSING_API_KEY", "api key is required"),
    ],
)
def test_a_bad_api_key_is_refused_at_the_edge_with_the_error_shape(
    gateway: Gateway, case: str, reason: str, message: str
) -> None:
    owner = register(gateway)
    secret = {"invalid": "lt_not-a-key", "empty": " "}.get(case, "")
    if case == "expired":
        secret = expiring_api_key(gateway, owner)["apiKey"]

    def answer() -> Any:  # the gate may remember the key's last answer for 0.5 s
        got = consume(gateway, owner["userId"], {"x-api-key": secret})
        assert got[0] in (200, 401), got
        return got if got[0] == 401 and got[2]["details"][0]["reason"] == reason else None

    _, headers, body = wait_until(answer, 10, what=f"{reason} at the edge")
    assert headers["content-type"] == "application/json"
    # ADR 0048: the google.rpc.Status of every other error, its ErrorInfo included.
    assert body == {"code": 16, "message": message, "details": [error_info(reason)]}
    assert "grpc-status-details-bin" not in headers  # that is for gRPC callers
    assert headers["www-authenticate"] == 'ApiKey realm="leaky-tokens"'
    # The same shape as a service's own error through the transcoder (no key, no token).
    _, _, service_error = consume(gateway, owner["userId"], {})
    assert service_error["details"] == [error_info("MISSING_CREDENTIALS")], service_error
    assert quota_used(gateway, owner) == 0


def test_a_bad_api_key_over_native_grpc_gets_the_error_info(gateway: Gateway) -> None:
    # Through Envoy, not to the service: Check's refusal, as a service would send it.
    owner = register(gateway)
    with grpc.insecure_channel(gateway.grpc) as channel:
        stub = token_pb2_grpc.TokenServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Consume(
                token_pb2.ConsumeRequest(user_id=owner["userId"], provider="openai", tokens=2),
                metadata=(("x-api-key", "lt_not-a-key"),),
                timeout=10,
            )
    error = refused.value
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "invalid api key"
    status = rpc_status.from_call(error)  # also checks code and message against the call's
    assert status is not None
    assert len(status.details) == 1
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("INVALID_API_KEY", "leaky-tokens")
    assert quota_used(gateway, owner) == 0


def test_a_revoked_key_is_refused_soon_after(gateway: Gateway) -> None:
    owner = register(gateway)
    key = api_key(gateway, owner)
    assert consume(gateway, owner["userId"], {"x-api-key": key["apiKey"]})[0] == 200
    status, _, _ = call(
        gateway,
        "DELETE",
        f"/api/v1/auth/api-keys?userId={owner['userId']}&apiKeyId={key['id']}",
        headers={"authorization": f"Bearer {owner['token']}"},
    )
    assert status == 200

    # Polled, not timed: the sub-second bound is the gate's (tests/unit/test_edge_auth.py).
    def refused() -> Any:
        answer = consume(gateway, owner["userId"], {"x-api-key": key["apiKey"]})
        assert answer[0] in (200, 401), answer
        return answer if answer[0] == 401 else None

    answer = wait_until(refused, 10, what="the revoked key is refused")
    assert answer[2]["code"] == 16
    assert answer[2]["details"] == [error_info("INVALID_API_KEY")]


def test_a_forged_identity_header_never_reaches_a_service(gateway: Gateway) -> None:
    victim, attacker = register(gateway), register(gateway)
    forged = {"x-leaky-user-id": victim["userId"], "x-leaky-auth": "jwt"}
    # Alone: no credentials, refused by the service (it saw no identity).
    status, _, body = consume(gateway, victim["userId"], forged)
    assert status == 401, body
    assert body["details"][0]["reason"] == "MISSING_CREDENTIALS"
    # Beside the attacker's own token or key: the call is the attacker's.
    key = api_key(gateway, attacker)
    for credentials in (
        {"authorization": f"Bearer {attacker['token']}"},
        {"x-api-key": key["apiKey"]},
    ):
        status, _, body = consume(gateway, victim["userId"], {**forged, **credentials})
        assert status == 403, body
    assert quota_used(gateway, victim) == 0


@pytest.mark.parametrize(
    "case",
    ["expired", "wrong issuer", "wrong audience", "mesh audience", "tampered", "foreign key"],
)
def test_bad_jwts_are_refused_by_envoy_with_the_error_shape(gateway: Gateway, case: str) -> None:
    user = register(gateway)
    past = datetime.now(UTC) - timedelta(hours=2)
    if case == "expired":
        token = signed(gateway, user, iat=past, exp=past + timedelta(minutes=5))
    elif case == "wrong issuer":
        token = signed(gateway, user, iss="someone-else")
    elif case == "wrong audience":
        token = signed(gateway, user, aud="another-api")
    elif case == "mesh audience":  # the tokens auth mints for API keys stay inside the mesh
        token = signed(gateway, user, aud="leaky-tokens#mesh")
    elif case == "tampered":
        header, payload, signature = user["token"].split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["roles"] = ["ADMIN"]
        forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        token = f"{header}.{forged}.{signature}"
    else:
        kid, _ = current_signing_key(gateway.data_dir / "auth.db")
        foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        claims = jwt.decode(user["token"], options={"verify_signature": False})
        token = jwt.encode(claims, foreign, algorithm="RS256", headers={"kid": kid})
    status, headers, body = consume(gateway, user["userId"], {"authorization": f"Bearer {token}"})
    # Envoy's jwt_authn answers a token for another audience 403: valid, but not for us.
    expected = (403, 7) if "audience" in case else (401, 16)
    assert (status, body["code"]) == expected, body
    assert headers["content-type"] == "application/json"
    assert set(body) == {"code", "message", "details"}
    # Envoy's jwt_authn answered (its messages name the Jwt, no ErrorInfo), not the service.
    assert "Jwt" in body["message"], body
    assert body["details"] == []
    assert quota_used(gateway, user) == 0


def test_the_same_signing_key_and_claims_pass(gateway: Gateway) -> None:
    # The control for the cases above: a token made the same way, nothing wrong with it.
    user = register(gateway)
    status, _, body = consume(
        gateway, user["userId"], {"authorization": f"Bearer {signed(gateway, user)}"}
    )
    assert status == 200, body


def test_public_routes_need_no_credentials_and_ignore_bad_ones(gateway: Gateway) -> None:
    user = register(gateway)
    expired = signed(
        gateway,
        user,
        iat=datetime.now(UTC) - timedelta(hours=2),
        exp=datetime.now(UTC) - timedelta(hours=1),
    )
    for headers in ({}, {"authorization": f"Bearer {expired}"}, {"x-api-key": "lt_not-a-key"}):
        for method, path, body in (
            ("GET", "/oauth2/jwks", None),
            ("GET", "/api/v1/tokens/status", None),
            ("GET", "/api/v1/analytics/health", None),
            (
                "POST",
                "/api/v1/auth/login",
                {"username": user["username"], "password": "correct horse"},
            ),
        ):
            status, _, answer = call(gateway, method, path, body, headers)
            assert status == 200, (path, headers, answer)


def test_validate_api_key_through_envoy_still_sees_the_key(gateway: Gateway) -> None:
    owner = register(gateway)
    key = api_key(gateway, owner)
    status, _, body = call(
        gateway, "GET", "/api/v1/auth/api-keys/validate", headers={"x-api-key": key["apiKey"]}
    )
    assert status == 200, body
    assert (body["userId"], body["apiKeyId"]) == (owner["userId"], key["id"])
    # A public RPC: the edge does not check the key, the service answers about it.
    status, _, body = call(
        gateway, "GET", "/api/v1/auth/api-keys/validate", headers={"x-api-key": "lt_not-a-key"}
    )
    assert status == 401, body
    assert body["details"][0]["reason"] == "INVALID_API_KEY"


def test_a_rotated_signing_key_is_accepted_at_the_edge_from_its_first_token(
    gateway: Gateway,
) -> None:
    # Envoy 1.40 cannot refetch on an unknown kid: it refetches the JWKS every
    # edge_auth.JWKS_CACHE_SECONDS. A rotated key is published first and signs only after
    # LEAKY_AUTH_SIGNING_KEY_LEAD_SECONDS (ADR 0049), so the edge holds it before any token
    # carries its kid: the first token signed with it passes, never a 401.
    boss = admin(gateway)
    old_kid = jwt.get_unverified_header(boss["token"])["kid"]
    status, _, rotated = call(
        gateway,
        "POST",
        "/api/v1/auth/signing-keys/rotate",
        {},
        {"authorization": f"Bearer {boss['token']}"},
    )
    assert status == 200, rotated
    assert rotated["kid"] != old_kid
    assert rotated["publishedKids"][:2] == [rotated["kid"], old_kid]
    # Until active_from the previous key signs (checked for a token issued before it: a
    # loaded machine may take the whole lead to register).
    user = register(gateway)
    active_from = datetime.fromisoformat(rotated["activeFrom"].replace("Z", "+00:00"))
    issued = datetime.fromtimestamp(
        jwt.decode(user["token"], options={"verify_signature": False})["iat"], UTC
    )
    if issued < active_from - timedelta(seconds=1):
        assert jwt.get_unverified_header(user["token"])["kid"] == old_kid

    def signed_with_the_new_key() -> dict[str, Any] | None:
        fresh = register(gateway)
        return fresh if jwt.get_unverified_header(fresh["token"])["kid"] == rotated["kid"] else None

    first = wait_until(
        signed_with_the_new_key, 60, what="tokens signed with the rotated key", interval=1.0
    )
    assert first is not None  # wait_until returns only a truthy result
    status, _, body = consume(
        gateway, first["userId"], {"authorization": f"Bearer {first['token']}"}
    )
    assert status == 200, body
    # The previous key stays published: tokens signed before the rotation still pass.
    status, _, body = consume(gateway, boss["userId"], {"authorization": f"Bearer {boss['token']}"})
    assert status == 200, body
