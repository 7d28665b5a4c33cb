"""The auth, token and analytics services through real grpc.aio servers and stubs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import jwt
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from leaky.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from leaky.auth.v1 import auth_pb2 as pb
from leaky.auth.v1 import auth_pb2_grpc
from leaky.token.v1 import token_pb2, token_pb2_grpc
from leaky_tokens.analytics.bootstrap import AnalyticsSettings
from leaky_tokens.analytics.bootstrap import build as build_analytics
from leaky_tokens.auth.adapters.in_memory_auth_store import InMemoryAuthStore
from leaky_tokens.auth.adapters.rsa_token_crypto import SigningKeyError
from leaky_tokens.auth.bootstrap import AuthComponents, AuthSettings
from leaky_tokens.auth.bootstrap import build as build_auth
from leaky_tokens.runtime.server import RunningServer, start_server
from leaky_tokens.token.bootstrap import TokenSettings
from leaky_tokens.token.bootstrap import build as build_token
from tests.support.fakes import FakePasswordHasher


@dataclass
class Mesh:
    auth: auth_pb2_grpc.AuthServiceAsyncStub
    token: token_pb2_grpc.TokenServiceAsyncStub
    analytics: analytics_pb2_grpc.AnalyticsServiceAsyncStub
    auth_components: AuthComponents
    auth_channel: grpc.aio.Channel


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async for running in serve_mesh():
        yield running


@pytest.fixture
async def mesh_without_lead() -> AsyncIterator[Mesh]:
    """A rotated key signs at once: for what peers do with a new kid (the lead has its own
    tests)."""
    async for running in serve_mesh(signing_key_lead_seconds=0):
        yield running


async def serve_mesh(signing_key_lead_seconds: int = 3600) -> AsyncIterator[Mesh]:
    """The three services on loopback. A rotated key stays pending for a whole test unless
    the lead is given (the default 15 s could pass mid-test on a loaded machine)."""
    auth_settings = AuthSettings(
        port=0,
        metrics_port=0,
        max_message_bytes=64 * 1024,
        signing_key_lead_seconds=signing_key_lead_seconds,
    )
    # The real servicer and RSA tokens (peers verify them) on the in-memory store and fast
    # hashing; the SQL store and argon2 have their own tests.
    auth = await build_auth(auth_settings, store=InMemoryAuthStore(), hasher=FakePasswordHasher())
    auth_server = await start_server(auth.spec, auth_settings, auth.verifier)
    target = f"127.0.0.1:{auth_server.port}"
    token_settings = TokenSettings(port=0, metrics_port=0, auth_target=target)
    token = await build_token(token_settings)
    token_server = await start_server(token.spec, token_settings, token.verifier)
    analytics_settings = AnalyticsSettings(port=0, metrics_port=0, auth_target=target)
    analytics = await build_analytics(analytics_settings)
    analytics_server = await start_server(analytics.spec, analytics_settings, analytics.verifier)
    servers: list[RunningServer] = [auth_server, token_server, analytics_server]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") for s in servers]
    yield Mesh(
        auth=auth_pb2_grpc.AuthServiceStub(channels[0]),
        token=token_pb2_grpc.TokenServiceStub(channels[1]),
        analytics=analytics_pb2_grpc.AnalyticsServiceStub(channels[2]),
        auth_components=auth,
        auth_channel=channels[0],
    )
    for channel in channels:
        await channel.close(grace=None)
    for server in servers:
        await server.stop(0)
    await token.close()  # its tasks and the purchase database's connections
    await analytics.close()  # its channel to auth (membership)
    await auth.close()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def details(error: grpc.aio.AioRpcError) -> dict[str, object]:
    """The google.rpc details of an error, by type name."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]  # an AioRpcError is a Call
    found: dict[str, object] = {}
    assert status is not None
    for item in status.details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
            if item.Is(cls.DESCRIPTOR):
                message = cls()
                item.Unpack(message)
                found[cls.DESCRIPTOR.name] = message
    return found


async def register(mesh: Mesh, name: str = "alice") -> pb.RegisterResponse:
    response: pb.RegisterResponse = await mesh.auth.Register(
        pb.RegisterRequest(username=name, email=f"{name}@example.com", password="correct horse")
    )
    return response


async def test_register_then_login_returns_token_for_same_user(mesh: Mesh) -> None:
    registered = await register(mesh)
    logged_in = await mesh.auth.Login(pb.LoginRequest(username="alice", password="correct horse"))
    assert logged_in.user_id == registered.user_id
    assert list(logged_in.roles) == ["USER"]
    assert logged_in.token
    assert logged_in.expires_at.seconds > 0


async def test_bad_registration_is_invalid_argument_with_field_violations(mesh: Mesh) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mesh.auth.Register(pb.RegisterRequest(username="al", email="x", password="1234567"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_request = details(info.value)["BadRequest"]
    assert {v.field for v in bad_request.field_violations} == {  # type: ignore[attr-defined]
        "username",
        "email",
        "password",
    }
    assert details(info.value)["ErrorInfo"].reason == "INVALID_ARGUMENT"  # type: ignore[attr-defined]


async def test_field_violations_name_the_json_fields(mesh: Mesh) -> None:
    me = await register(mesh)
    calls: list[tuple[str, Awaitable[object]]] = [
        (
            "expiresAt",
            mesh.auth.CreateApiKey(
                pb.CreateApiKeyRequest(
                    user_id=me.user_id, expires_at=timestamp_pb2.Timestamp(seconds=1)
                ),
                metadata=bearer(me.token),
            ),
        ),
        (
            "apiKeyId",
            mesh.auth.RevokeApiKey(
                pb.RevokeApiKeyRequest(user_id=me.user_id, api_key_id="not-a-uuid"),
                metadata=bearer(me.token),
            ),
        ),
        (
            "userId",
            mesh.auth.ListApiKeys(pb.ListApiKeysRequest(user_id="x"), metadata=bearer(me.token)),
        ),
        (
            "orgId",
            mesh.auth.ListOrganizationMembers(
                pb.ListOrganizationMembersRequest(org_id="x"), metadata=bearer(me.token)
            ),
        ),
    ]
    for field, call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        bad_request = details(info.value)["BadRequest"]
        assert [v.field for v in bad_request.field_violations] == [field]  # type: ignore[attr-defined]
        assert f"{field}:" in (info.value.details() or "")


async def test_duplicate_username_is_already_exists(mesh: Mesh) -> None:
    await register(mesh)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mesh.auth.Register(
            pb.RegisterRequest(username="alice", email="new@example.com", password="correct horse")
        )
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert details(info.value)["ErrorInfo"].reason == "USERNAME_TAKEN"  # type: ignore[attr-defined]


async def test_api_key_lifecycle_over_grpc(mesh: Mesh) -> None:
    me = await register(mesh)
    auth = bearer(me.token)
    expiry = timestamp_pb2.Timestamp(seconds=4_000_000_000)
    created = await mesh.auth.CreateApiKey(
        pb.CreateApiKeyRequest(user_id=me.user_id, name="ci", expires_at=expiry), metadata=auth
    )
    assert created.api_key.startswith("lt_")
    assert created.expires_at == expiry
    listed = await mesh.auth.ListApiKeys(pb.ListApiKeysRequest(user_id=me.user_id), metadata=auth)
    assert [k.id for k in listed.api_keys] == [created.id]
    assert created.api_key not in str(listed)
    by_header = await mesh.auth.ValidateApiKey(
        pb.ValidateApiKeyRequest(), metadata=(("x-api-key", created.api_key),)
    )
    assert by_header.user_id == me.user_id
    assert list(by_header.roles) == ["USER"]
    await mesh.auth.RevokeApiKey(
        pb.RevokeApiKeyRequest(user_id=me.user_id, api_key_id=created.id), metadata=auth
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mesh.auth.ValidateApiKey(
            pb.ValidateApiKeyRequest(), metadata=(("x-api-key", created.api_key),)
        )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_protected_rpc_without_token_is_unauthenticated(mesh: Mesh) -> None:
    me = await register(mesh)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mesh.auth.ListApiKeys(pb.ListApiKeysRequest(user_id=me.user_id))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_forged_or_garbled_token_is_unauthenticated(mesh: Mesh) -> None:
    me = await register(mesh)
    header, payload, signature = me.token.split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    for token in (forged, "not-a-jwt"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await mesh.auth.ListApiKeys(
                pb.ListApiKeysRequest(user_id=me.user_id), metadata=bearer(token)
            )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_other_users_keys_are_permission_denied(mesh: Mesh) -> None:
    alice = await register(mesh, "alice")
    bob = await register(mesh, "bob")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mesh.auth.ListApiKeys(
            pb.ListApiKeysRequest(user_id=alice.user_id), metadata=bearer(bob.token)
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_jwks_publishes_current_and_previous_key_after_rotation(mesh: Mesh) -> None:
    me = await register(mesh)
    before = await mesh.auth.GetJwks(pb.GetJwksRequest())
    assert [k.kty for k in before.keys] == ["RSA"]
    assert before.keys[0].alg == "RS256"
    assert before.keys[0].use == "sig"
    await mesh.auth_components.app.grant_role("alice", "ADMIN")
    admin = await mesh.auth.Login(pb.LoginRequest(username="alice", password="correct horse"))
    rotated = await mesh.auth.RotateSigningKey(
        pb.RotateSigningKeyRequest(), metadata=bearer(admin.token)
    )
    after = await mesh.auth.GetJwks(pb.GetJwksRequest())
    assert [k.kid for k in after.keys] == [rotated.kid, before.keys[0].kid]
    # Published first, signing after the lead: until then logins still get the previous kid.
    # (The mesh's lead is an hour, so nothing here races it on a slow machine.)
    lead = rotated.active_from.ToDatetime(UTC) - datetime.now(UTC)
    assert timedelta(minutes=59) < lead <= timedelta(hours=1)
    fresh = await mesh.auth.Login(pb.LoginRequest(username="alice", password="correct horse"))
    assert jwt.get_unverified_header(fresh.token)["kid"] == before.keys[0].kid
    with pytest.raises(grpc.aio.AioRpcError) as pending:
        await mesh.auth.RotateSigningKey(pb.RotateSigningKeyRequest(), metadata=bearer(admin.token))
    assert pending.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # A token signed with the previous key still works.
    await mesh.auth.ListApiKeys(
        pb.ListApiKeysRequest(user_id=me.user_id), metadata=bearer(me.token)
    )


async def test_organizations_over_grpc(mesh: Mesh) -> None:
    alice = await register(mesh, "alice")
    bob = await register(mesh, "bob")
    created = await mesh.auth.CreateOrganization(
        pb.CreateOrganizationRequest(name="acme"), metadata=bearer(alice.token)
    )
    org_id = created.organization.id
    await mesh.auth.AddOrganizationMember(
        pb.AddOrganizationMemberRequest(org_id=org_id, user_id=bob.user_id),
        metadata=bearer(alice.token),
    )
    mine = await mesh.auth.ListMyOrganizations(
        pb.ListMyOrganizationsRequest(), metadata=bearer(bob.token)
    )
    assert [o.name for o in mine.organizations] == ["acme"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mesh.auth.RemoveOrganizationMember(
            pb.RemoveOrganizationMemberRequest(org_id=org_id, user_id=alice.user_id),
            metadata=bearer(bob.token),
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    relogin = await mesh.auth.Login(pb.LoginRequest(username="bob", password="correct horse"))
    validated = await mesh.auth.ListOrganizationMembers(
        pb.ListOrganizationMembersRequest(org_id=org_id), metadata=bearer(relogin.token)
    )
    assert [m.username for m in validated.members] == ["alice", "bob"]


async def test_analytics_asks_auth_who_may_read_an_organization(mesh: Mesh) -> None:
    alice = await register(mesh, "alice")
    bob = await register(mesh, "bob")
    created = await mesh.auth.CreateOrganization(
        pb.CreateOrganizationRequest(name="acme"), metadata=bearer(alice.token)
    )
    org_id = created.organization.id
    # Alice's token predates the organization: the analytics service asks auth, not the JWT.
    report = await mesh.analytics.GetReport(
        analytics_pb2.GetReportRequest(provider="openai", org_id=org_id),
        metadata=bearer(alice.token),
    )
    assert (report.org_id, report.total_events) == (org_id, 0)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mesh.analytics.GetReport(
            analytics_pb2.GetReportRequest(provider="openai", org_id=org_id),
            metadata=bearer(bob.token),
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    error_info = details(info.value)["ErrorInfo"]
    assert isinstance(error_info, error_details_pb2.ErrorInfo)
    assert error_info.reason == "NOT_ORG_MEMBER"


async def test_malformed_protobuf_is_invalid_argument_not_unknown(mesh: Mesh) -> None:
    raw = mesh.auth_channel.unary_unary(
        "/leaky.auth.v1.AuthService/Register",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw(b"\xff\xff\xff\xff")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_oversized_request_is_invalid_argument(mesh: Mesh) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mesh.auth.Register(
            pb.RegisterRequest(username="alice", email="a@example.com", password="x" * 100_000)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit" in (info.value.details() or "")


async def test_token_service_verifies_auth_tokens_through_jwks(mesh: Mesh) -> None:
    me = await register(mesh)
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await mesh.token.GetQuota(token_pb2.GetQuotaRequest(user_id=me.user_id, provider="openai"))
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    quota = await mesh.token.GetQuota(
        token_pb2.GetQuotaRequest(user_id=me.user_id, provider="openai"),
        metadata=bearer(me.token),
    )
    # Authenticated: the caller's own quota, at the tier of the roles in the token (USER).
    assert (quota.user_id, quota.tier, quota.window_used) == (me.user_id, "USER", 0)


async def test_peer_service_refreshes_jwks_when_a_new_key_appears(
    mesh_without_lead: Mesh,
) -> None:
    mesh = mesh_without_lead
    await register(mesh)
    await mesh.auth_components.app.grant_role("alice", "ADMIN")
    admin = await mesh.auth.Login(pb.LoginRequest(username="alice", password="correct horse"))
    before = await mesh.analytics.GetUsage(
        analytics_pb2.GetUsageRequest(provider="openai"), metadata=bearer(admin.token)
    )
    assert before.provider == "openai"
    await mesh.auth.RotateSigningKey(pb.RotateSigningKeyRequest(), metadata=bearer(admin.token))
    fresh = await mesh.auth.Login(pb.LoginRequest(username="alice", password="correct horse"))
    after = await mesh.analytics.GetUsage(
        analytics_pb2.GetUsageRequest(provider="openai"), metadata=bearer(fresh.token)
    )
    assert after.provider == "openai"  # the new kid verified


async def test_status_and_health_rpcs_are_public_and_real(mesh: Mesh) -> None:
    status = await mesh.token.GetStatus(token_pb2.GetStatusRequest())
    assert (status.service, status.status) == ("token-service", "ok")
    health = await mesh.analytics.GetHealth(analytics_pb2.GetHealthRequest())
    assert (health.service, health.status) == ("analytics-service", "ok")


async def test_public_rpcs_ignore_stale_or_garbled_credentials(mesh: Mesh) -> None:
    await register(mesh)
    for header in ("Bearer not.a.jwt", "Basic dXNlcjpwYXNz"):
        answer = await mesh.auth.Login(
            pb.LoginRequest(username="alice", password="correct horse"),
            metadata=(("authorization", header),),
        )
        assert answer.token


async def test_out_of_range_expiry_is_invalid_argument(mesh: Mesh) -> None:
    me = await register(mesh)
    for expiry in (timestamp_pb2.Timestamp(seconds=10**12), timestamp_pb2.Timestamp(nanos=-5)):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await mesh.auth.CreateApiKey(
                pb.CreateApiKeyRequest(user_id=me.user_id, expires_at=expiry),
                metadata=bearer(me.token),
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_wrong_signing_key_passphrase_fails_at_start(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    first = await build_auth(AuthSettings(database_url=url, signing_key_passphrase="one"))
    await first.close()
    with pytest.raises(SigningKeyError, match="PASSPHRASE"):
        await build_auth(AuthSettings(database_url=url, signing_key_passphrase="two"))


async def test_stop_goes_not_serving_before_refusing_calls(tmp_path: Path) -> None:
    settings = AuthSettings(
        port=0, metrics_port=0, database_url=f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"
    )
    auth = await build_auth(settings)
    running = await start_server(auth.spec, settings, auth.verifier)
    seen: list[int] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        first = await watch.read()
        seen.append(first.status)
        stopping = asyncio.create_task(running.stop(grace=1, delay=0.5))
        second = await watch.read()
        seen.append(second.status)
        # Still answering during the delay: in-flight and new calls are not cut off yet.
        jwks = await auth_pb2_grpc.AuthServiceStub(channel).GetJwks(pb.GetJwksRequest())
        assert jwks.keys
        await stopping
    await auth.close()
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert seen == [serving, not_serving]


async def test_list_rpcs_page_with_next_page_token(mesh: Mesh) -> None:
    me = await register(mesh)
    auth = bearer(me.token)
    for n in range(5):
        await mesh.auth.CreateApiKey(
            pb.CreateApiKeyRequest(user_id=me.user_id, name=f"k{n}"), metadata=auth
        )
        await mesh.auth.CreateOrganization(
            pb.CreateOrganizationRequest(name=f"org{n}"), metadata=auth
        )
    everything = await mesh.auth.ListApiKeys(
        pb.ListApiKeysRequest(user_id=me.user_id), metadata=auth
    )
    assert len(everything.api_keys) == 5
    assert everything.next_page_token == ""
    ids: list[str] = []
    token = ""
    while True:
        page = await mesh.auth.ListApiKeys(
            pb.ListApiKeysRequest(user_id=me.user_id, page_size=2, page_token=token), metadata=auth
        )
        assert len(page.api_keys) <= 2
        ids += [k.id for k in page.api_keys]
        token = page.next_page_token
        if not token:
            break
    assert ids == [k.id for k in everything.api_keys]
    relogin = await mesh.auth.Login(pb.LoginRequest(username="alice", password="correct horse"))
    orgs = await mesh.auth.ListMyOrganizations(
        pb.ListMyOrganizationsRequest(page_size=3), metadata=bearer(relogin.token)
    )
    more = await mesh.auth.ListMyOrganizations(
        pb.ListMyOrganizationsRequest(page_size=3, page_token=orgs.next_page_token),
        metadata=bearer(relogin.token),
    )
    assert [o.name for o in orgs.organizations] + [o.name for o in more.organizations] == [
        f"org{n}" for n in range(5)
    ]
    members = await mesh.auth.ListOrganizationMembers(
        pb.ListOrganizationMembersRequest(org_id=orgs.organizations[0].id, page_size=1),
        metadata=bearer(relogin.token),
    )
    assert [m.username for m in members.members] == ["alice"]
    assert members.next_page_token == ""


async def test_bad_page_token_names_the_json_field(mesh: Mesh) -> None:
    me = await register(mesh)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mesh.auth.ListApiKeys(
            pb.ListApiKeysRequest(user_id=me.user_id, page_token="nope", page_size=-1),
            metadata=bearer(me.token),
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_request = details(info.value)["BadRequest"]
    assert {v.field for v in bad_request.field_violations} == {"pageSize", "pageToken"}  # type: ignore[attr-defined]


async def test_per_user_caps_answer_failed_precondition_with_a_reason() -> None:
    settings = AuthSettings(
        port=0, metrics_port=0, max_api_keys_per_user=1, max_owned_orgs_per_user=1
    )
    auth = await build_auth(settings, store=InMemoryAuthStore(), hasher=FakePasswordHasher())
    running = await start_server(auth.spec, settings, auth.verifier)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        me = await stub.Register(
            pb.RegisterRequest(username="alice", email="a@example.com", password="correct horse")
        )
        auth_md = bearer(me.token)
        await stub.CreateApiKey(pb.CreateApiKeyRequest(user_id=me.user_id), metadata=auth_md)
        await stub.CreateOrganization(pb.CreateOrganizationRequest(name="Acme"), metadata=auth_md)
        refused: list[Awaitable[object]] = [
            stub.CreateApiKey(pb.CreateApiKeyRequest(user_id=me.user_id), metadata=auth_md),
            stub.CreateOrganization(pb.CreateOrganizationRequest(name="Other"), metadata=auth_md),
        ]
        reasons = []
        for call in refused:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            error_info = details(info.value)["ErrorInfo"]
            reasons.append(error_info.reason)  # type: ignore[attr-defined]
            assert dict(error_info.metadata) == {"limit": "1"}  # type: ignore[attr-defined]
        assert reasons == ["API_KEY_LIMIT", "OWNED_ORG_LIMIT"]
    await running.stop(0)
    await auth.close()


async def test_org_name_in_another_case_is_already_exists(mesh: Mesh) -> None:
    alice = await register(mesh, "alice")
    bob = await register(mesh, "bob")
    await mesh.auth.CreateOrganization(
        pb.CreateOrganizationRequest(name="Acme"), metadata=bearer(alice.token)
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mesh.auth.CreateOrganization(
            pb.CreateOrganizationRequest(name="ACME"), metadata=bearer(bob.token)
        )
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert details(info.value)["ErrorInfo"].reason == "ORG_NAME_TAKEN"  # type: ignore[attr-defined]
