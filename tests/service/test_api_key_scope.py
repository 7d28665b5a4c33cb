# ruff: noqa: F811  (the `mesh` fixture is imported from test_auth_service and used as such)
"""API keys act for their owner but cannot administer identity or money (ADR 0048).

Through real grpc.aio servers, with the mesh token the auth service's Check hands the
services for a key (what Envoy forwards): every refused operation is PERMISSION_DENIED with
ErrorInfo API_KEY_NOT_ALLOWED, and succeeds with the same owner's login token (so the key,
nothing else, is what is refused); the metered and read operations stay allowed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest

from leaky.analytics.v1 import analytics_pb2
from leaky.auth.v1 import auth_pb2 as pb
from leaky.token.v1 import token_pb2
from leaky.vendor.envoy.service.auth.v3 import external_auth_pb2_grpc
from leaky_tokens.auth.edge_check import API_KEY_HEADER
from tests.service.test_auth_service import Mesh, bearer, details, mesh, register  # noqa: F401
from tests.service.test_edge_identity import check_request, headers_of

Metadata = tuple[tuple[str, str], ...]


@dataclass
class Keyed:
    """An ADMIN (so no role or ownership rule refuses first), their org with a member, another
    user, and both credentials of the ADMIN: the login token and an API key's mesh token."""

    mesh: Mesh
    me: pb.LoginResponse
    org_id: str
    other_id: str  # not a member
    member_id: str
    key_id: str
    jwt: Metadata
    key: Metadata


async def keyed(mesh: Mesh) -> Keyed:
    await register(mesh, "alice")
    await mesh.auth_components.app.grant_role("alice", "ADMIN")
    me = await mesh.auth.Login(pb.LoginRequest(username="alice", password="correct horse"))
    other, member = await register(mesh, "bob"), await register(mesh, "carol")
    jwt = bearer(me.token)
    created = await mesh.auth.CreateApiKey(
        pb.CreateApiKeyRequest(user_id=me.user_id, name="ci"), metadata=jwt
    )
    org = await mesh.auth.CreateOrganization(
        pb.CreateOrganizationRequest(name="acme"), metadata=jwt
    )
    add = pb.AddOrganizationMemberRequest(org_id=org.organization.id, user_id=member.user_id)
    await mesh.auth.AddOrganizationMember(add, metadata=jwt)
    check = external_auth_pb2_grpc.AuthorizationStub(mesh.auth_channel)
    answer = await check.Check(check_request({API_KEY_HEADER: created.api_key}))
    key = (("authorization", headers_of(answer)["authorization"]),)
    return Keyed(mesh, me, org.organization.id, other.user_id, member.user_id, created.id, jwt, key)


# Each call: (world, credential, a fresh suffix for names) -> the RPC's answer.
Call = Callable[[Keyed, Metadata, str], Awaitable[object]]


def _create_key(k: Keyed, m: Metadata, n: str) -> Awaitable[object]:
    return k.mesh.auth.CreateApiKey(
        pb.CreateApiKeyRequest(user_id=k.me.user_id, name=n), metadata=m
    )


def _list_keys(k: Keyed, m: Metadata, n: str) -> Awaitable[object]:
    return k.mesh.auth.ListApiKeys(pb.ListApiKeysRequest(user_id=k.me.user_id), metadata=m)


async def _revoke_key(k: Keyed, m: Metadata, n: str) -> object:
    # A key of its own to revoke, so the control (the login token) revokes that one.
    spare = await _create_key(k, k.jwt, "spare" + n)
    assert isinstance(spare, pb.CreateApiKeyResponse)
    request = pb.RevokeApiKeyRequest(user_id=k.me.user_id, api_key_id=spare.id)
    return await k.mesh.auth.RevokeApiKey(request, metadata=m)


def _rotate(k: Keyed, m: Metadata, n: str) -> Awaitable[object]:
    return k.mesh.auth.RotateSigningKey(pb.RotateSigningKeyRequest(), metadata=m)


def _create_org(k: Keyed, m: Metadata, n: str) -> Awaitable[object]:
    return k.mesh.auth.CreateOrganization(pb.CreateOrganizationRequest(name="org" + n), metadata=m)


def _add_member(k: Keyed, m: Metadata, n: str) -> Awaitable[object]:
    request = pb.AddOrganizationMemberRequest(org_id=k.org_id, user_id=k.other_id)
    return k.mesh.auth.AddOrganizationMember(request, metadata=m)


def _remove_member(k: Keyed, m: Metadata, n: str) -> Awaitable[object]:
    request = pb.RemoveOrganizationMemberRequest(org_id=k.org_id, user_id=k.member_id)
    return k.mesh.auth.RemoveOrganizationMember(request, metadata=m)


def _purchase(k: Keyed, m: Metadata, n: str) -> Awaitable[object]:
    request = token_pb2.PurchaseRequest(user_id=k.me.user_id, provider="openai", tokens=10)
    return k.mesh.token.Purchase(request, metadata=m)


def _grant(k: Keyed, m: Metadata, n: str) -> Awaitable[object]:
    request = token_pb2.GrantTokensRequest(
        user_id=k.me.user_id, provider="openai", tokens=10, reason="test"
    )
    return k.mesh.token.GrantTokens(request, metadata=m)


REFUSED: dict[str, Call] = {
    "CreateApiKey": _create_key,
    "ListApiKeys": _list_keys,
    "RevokeApiKey": _revoke_key,
    "RotateSigningKey": _rotate,
    "CreateOrganization": _create_org,
    "AddOrganizationMember": _add_member,
    "RemoveOrganizationMember": _remove_member,
    "Purchase": _purchase,
    "GrantTokens": _grant,
}


@pytest.mark.parametrize("rpc", sorted(REFUSED))
async def test_an_api_key_cannot_administer_identity_or_buy_tokens(mesh: Mesh, rpc: str) -> None:
    k = await keyed(mesh)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await REFUSED[rpc](k, k.key, "-key")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, refused.value.details()
    info = details(refused.value)["ErrorInfo"]
    assert info.reason == "API_KEY_NOT_ALLOWED"  # type: ignore[attr-defined]
    assert info.domain == "leaky-tokens"  # type: ignore[attr-defined]
    assert dict(info.metadata) == {"api_key_id": k.key_id}  # type: ignore[attr-defined]
    # The control: the same owner's login token may.
    await REFUSED[rpc](k, k.jwt, "-jwt")


async def test_a_refused_key_changed_nothing(mesh: Mesh) -> None:
    k = await keyed(mesh)
    for rpc in ("CreateApiKey", "CreateOrganization"):
        with pytest.raises(grpc.aio.AioRpcError):
            await REFUSED[rpc](k, k.key, "-key")
    keys = await mesh.auth.ListApiKeys(pb.ListApiKeysRequest(user_id=k.me.user_id), metadata=k.jwt)
    assert [key.id for key in keys.api_keys] == [k.key_id]
    orgs = await mesh.auth.ListMyOrganizations(pb.ListMyOrganizationsRequest(), metadata=k.jwt)
    assert [o.id for o in orgs.organizations] == [k.org_id]


async def test_an_api_key_still_meters_and_reads(mesh: Mesh) -> None:
    k = await keyed(mesh)
    uid = k.me.user_id
    # (Consume calls a provider, which this mesh has not: tests/e2e/test_edge_identity.py
    # consumes with a key through Envoy.)
    quota = await mesh.token.GetQuota(
        token_pb2.GetQuotaRequest(user_id=uid, provider="openai"), metadata=k.key
    )
    assert quota.user_id == uid
    held = await mesh.token.Reserve(
        token_pb2.ReserveRequest(user_id=uid, provider="openai", tokens=5), metadata=k.key
    )
    settled = await mesh.token.Settle(
        token_pb2.SettleRequest(reservation_id=held.reservation.reservation_id, actual_tokens=2),
        metadata=k.key,
    )
    assert settled.refunded_tokens == 3
    orgs = await mesh.auth.ListMyOrganizations(pb.ListMyOrganizationsRequest(), metadata=k.key)
    assert [o.id for o in orgs.organizations] == [k.org_id]
    members = await mesh.auth.ListOrganizationMembers(
        pb.ListOrganizationMembersRequest(org_id=k.org_id), metadata=k.key
    )
    assert sorted(m.user_id for m in members.members) == sorted([uid, k.member_id])
    report = await mesh.analytics.GetReport(
        analytics_pb2.GetReportRequest(user_id=uid, provider="openai"), metadata=k.key
    )
    assert report is not None
