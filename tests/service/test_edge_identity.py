# ruff: noqa: F811  (the `mesh` fixture is imported from test_auth_service and used as such)
"""Envoy's API-key check (Authorization/Check on the auth service) and what services trust.

Through real grpc.aio servers: Check resolves a key into a mesh token the token service
accepts; the services never take identity from x-leaky-* headers (ADR 0041).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import grpc
import jwt
import pytest
from google.rpc import error_details_pb2, status_pb2

from leaky.auth.v1 import auth_pb2 as pb
from leaky.token.v1 import token_pb2
from leaky.vendor.envoy.service.auth.v3 import external_auth_pb2 as ext_pb
from leaky.vendor.envoy.service.auth.v3 import external_auth_pb2_grpc
from leaky_tokens.auth.edge_check import API_KEY_HEADER, GRPC_CALLER_KEY, METADATA_NAMESPACE
from tests.service.test_auth_service import Mesh, bearer, mesh, register  # noqa: F401


def check_request(
    headers: dict[str, str], path: str = "/leaky.token.v1.TokenService/GetQuota"
) -> ext_pb.CheckRequest:
    request = ext_pb.CheckRequest()
    request.attributes.request.http.path = path
    request.attributes.request.http.headers.update(headers)
    return request


def headers_of(response: ext_pb.CheckResponse) -> dict[str, str]:
    return {h.header.key: h.header.value for h in response.ok_response.headers}


async def issued_key(mesh: Mesh, name: str = "alice") -> tuple[pb.RegisterResponse, str, str]:
    me = await register(mesh, name)
    created = await mesh.auth.CreateApiKey(
        pb.CreateApiKeyRequest(user_id=me.user_id, name="ci"), metadata=bearer(me.token)
    )
    return me, created.id, created.api_key


async def test_check_answers_a_valid_key_with_a_mesh_token_the_token_service_accepts(
    mesh: Mesh,
) -> None:
    me, key_id, secret = await issued_key(mesh)
    check = external_auth_pb2_grpc.AuthorizationStub(mesh.auth_channel)
    answer = await check.Check(check_request({API_KEY_HEADER: secret}))
    assert answer.status.code == 0
    headers = headers_of(answer)
    assert headers["x-leaky-user-id"] == me.user_id
    assert headers["x-leaky-api-key-id"] == key_id
    assert headers["x-leaky-auth"] == "api_key"
    # The key goes no further than the edge.
    assert list(answer.ok_response.headers_to_remove) == [API_KEY_HEADER]
    scheme, _, token = headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == "leaky-tokens#mesh"  # refused by the edge's jwt_authn
    assert (claims["sub"], claims["akid"], claims["amr"]) == (me.user_id, key_id, ["api_key"])
    assert claims["exp"] - claims["iat"] <= 60
    quota = await mesh.token.GetQuota(
        token_pb2.GetQuotaRequest(user_id=me.user_id, provider="openai"), metadata=bearer(token)
    )
    assert quota.user_id == me.user_id


def denied_headers(response: ext_pb.CheckResponse) -> dict[str, str]:
    return {h.header.key: h.header.value for h in response.denied_response.headers}


def grpc_caller(request: ext_pb.CheckRequest) -> ext_pb.CheckRequest:
    """The request as Envoy sends it for a native gRPC caller (the identity filter's mark)."""
    marks = request.attributes.metadata_context.filter_metadata[METADATA_NAMESPACE]
    marks.update({"api_key": "1", GRPC_CALLER_KEY: "1"})
    return request


async def test_check_refuses_unknown_and_missing_keys_with_401_and_error_info(
    mesh: Mesh,
) -> None:
    check = external_auth_pb2_grpc.AuthorizationStub(mesh.auth_channel)
    for headers, reason, message in (
        ({API_KEY_HEADER: "lt_not-a-key"}, "INVALID_API_KEY", "invalid api key"),
        ({}, "MISSING_API_KEY", "api key is required"),
    ):
        answer = await check.Check(check_request(headers))
        assert answer.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
        assert answer.denied_response.status.code == 401
        assert not answer.HasField("ok_response")
        # HTTP callers: the google.rpc.Status JSON, printed as the transcoder prints errors.
        assert json.loads(answer.denied_response.body) == {
            "code": 16,
            "message": message,
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": reason,
                    "domain": "leaky-tokens",
                    "metadata": {},
                }
            ],
        }
        assert denied_headers(answer)["content-type"] == "application/json"
        assert "grpc-status-details-bin" not in denied_headers(answer)
        # gRPC callers: the message as body (grpc-message), the Status in the details header.
        answer = await check.Check(grpc_caller(check_request(headers)))
        assert answer.denied_response.status.code == 401
        assert answer.denied_response.body == message
        sent = denied_headers(answer)
        assert "content-type" not in sent
        status = status_pb2.Status.FromString(base64.b64decode(sent["grpc-status-details-bin"]))
        assert (status.code, status.message) == (16, message)
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        assert (info.reason, info.domain) == (reason, "leaky-tokens")


async def test_a_revoked_key_is_refused_by_check_within_the_cache_bound(mesh: Mesh) -> None:
    me, key_id, secret = await issued_key(mesh)
    check = external_auth_pb2_grpc.AuthorizationStub(mesh.auth_channel)
    assert (await check.Check(check_request({API_KEY_HEADER: secret}))).status.code == 0
    await mesh.auth.RevokeApiKey(
        pb.RevokeApiKeyRequest(user_id=me.user_id, api_key_id=key_id), metadata=bearer(me.token)
    )

    async def refused() -> bool:
        answer = await check.Check(check_request({API_KEY_HEADER: secret}))
        return bool(answer.denied_response.status.code == 401)

    # Polled, never timed (the sub-second bound is proven with a fake clock in tests/unit);
    # once refused it stays refused.
    deadline = time.monotonic() + 10
    while not await refused():
        assert time.monotonic() < deadline, "the revoked key was never refused"
        await asyncio.sleep(0.05)
    assert await refused()


async def test_services_refuse_forged_identity_headers_without_a_token(mesh: Mesh) -> None:
    me = await register(mesh)
    forged = (
        ("x-leaky-user-id", me.user_id),
        ("x-leaky-auth", "api_key"),
        ("x-leaky-api-key-id", me.user_id),
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mesh.token.GetQuota(
            token_pb2.GetQuotaRequest(user_id=me.user_id, provider="openai"), metadata=forged
        )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as consume:
        await mesh.token.Consume(
            token_pb2.ConsumeRequest(user_id=me.user_id, provider="openai", tokens=1),
            metadata=forged,
        )
    assert consume.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_forged_identity_headers_beside_a_token_change_nothing(mesh: Mesh) -> None:
    alice = await register(mesh, "alice")
    bob = await register(mesh, "bobby")
    metadata = (*bearer(alice.token), ("x-leaky-user-id", bob.user_id))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mesh.token.GetQuota(
            token_pb2.GetQuotaRequest(user_id=bob.user_id, provider="openai"), metadata=metadata
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
