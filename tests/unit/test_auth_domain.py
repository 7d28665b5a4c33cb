"""Auth rules: registration, login, API keys, organizations and signing keys.

Unit tier: the domain on the in-memory store, a fake clock, fake hashing and fake token
crypto, so nothing here touches a disk, a socket, argon2 or RSA.
"""

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest

from leaky_tokens.auth.adapters.in_memory_auth_store import InMemoryAuthStore
from leaky_tokens.auth.bootstrap import AuthSettings
from leaky_tokens.auth.domain.model import ADMIN
from leaky_tokens.auth.domain.service import AuthApp, AuthPolicy, hash_api_key
from leaky_tokens.gateway.edge_auth import JWKS_CACHE_SECONDS
from leaky_tokens.runtime.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from leaky_tokens.runtime.identity import Caller
from tests.conftest import make_app
from tests.support.fakes import FakeClock, FakePasswordHasher, FakeTokenCrypto


def caller_of(user_id: str, *roles: str, orgs: frozenset[str] = frozenset()) -> Caller:
    return Caller(user_id=user_id, roles=frozenset(roles or ("USER",)), org_ids=orgs)


async def register(app: AuthApp, name: str = "alice") -> str:
    session = await app.register(name, f"{name}@example.com", "correct horse")
    return session.user.id


def violations(error: InvalidArgumentError) -> dict[str, str]:
    return {v.field: v.description for v in error.violations}


async def test_register_reports_every_bad_field_at_once(auth_app: AuthApp) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        await auth_app.register("x", "not-an-email", "short")
    assert set(violations(info.value)) == {"username", "email", "password"}
    assert "at least 8" in violations(info.value)["password"]


async def test_register_rejects_missing_fields(auth_app: AuthApp) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        await auth_app.register("", "  ", "")
    assert violations(info.value) == {
        "username": "is required",
        "email": "is required",
        "password": "is required",
    }


async def test_username_and_email_are_unique_case_insensitively(auth_app: AuthApp) -> None:
    await auth_app.register("alice", "alice@example.com", "correct horse")
    with pytest.raises(AlreadyExistsError) as info:
        await auth_app.register("ALICE", "other@example.com", "correct horse")
    assert info.value.reason == "USERNAME_TAKEN"
    with pytest.raises(AlreadyExistsError) as info:
        await auth_app.register("bob", "Alice@Example.com", "correct horse")
    assert info.value.reason == "EMAIL_TAKEN"


async def test_password_is_stored_only_as_a_salted_hash(
    auth_app: AuthApp, memory_store: InMemoryAuthStore
) -> None:
    alice = await memory_store.get_user(await register(auth_app, "alice"))
    bob = await memory_store.get_user(await register(auth_app, "bob"))
    assert alice is not None
    assert bob is not None
    assert alice.password_hash.startswith("$fake$")
    assert "correct horse" not in alice.password_hash
    assert alice.password_hash != bob.password_hash  # same password, different salt


async def test_login_failure_does_not_reveal_whether_username_exists(auth_app: AuthApp) -> None:
    await register(auth_app)
    with pytest.raises(UnauthenticatedError) as wrong_password:
        await auth_app.login("alice", "wrong password")
    with pytest.raises(UnauthenticatedError) as unknown_user:
        await auth_app.login("nobody", "wrong password")
    assert wrong_password.value.message == unknown_user.value.message == "invalid credentials"
    assert wrong_password.value.reason == unknown_user.value.reason


async def test_token_carries_identity_roles_orgs_and_expiry(
    auth_app: AuthApp, clock: FakeClock
) -> None:
    user_id = await register(auth_app)
    org = await auth_app.create_org(caller_of(user_id), "acme")
    session = await auth_app.login("alice", "correct horse")
    header = jwt.get_unverified_header(session.token)
    claims = jwt.decode(session.token, options={"verify_signature": False})
    assert header["kid"] == (await auth_app.jwks())[0]["kid"]
    assert claims["sub"] == user_id
    assert claims["iss"] == "leaky-tokens-auth"
    assert claims["roles"] == ["USER"]
    assert claims["orgs"] == [org.id]
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["jti"]
    assert session.expires_at == clock.now() + timedelta(hours=1)


async def test_issued_token_verifies_with_the_current_signing_key(
    auth_app: AuthApp, memory_store: InMemoryAuthStore, crypto: FakeTokenCrypto
) -> None:
    user_id = await register(auth_app)
    session = await auth_app.login("alice", "correct horse")
    keys = await memory_store.list_signing_keys(1)
    claims = crypto.decode(session.token, keys, audience="leaky-tokens")
    assert claims["sub"] == user_id
    assert claims["roles"] == ["USER"]
    header, payload, signature = session.token.split(".")
    with pytest.raises(jwt.InvalidSignatureError):
        crypto.decode(f"{header}.{payload}.{signature[:-4]}AAAA", keys, audience="leaky-tokens")


async def test_rotation_publishes_the_new_key_first_and_signs_with_it_after_the_lead(
    auth_app: AuthApp, clock: FakeClock
) -> None:
    user_id = await register(auth_app)
    admin = caller_of(user_id, ADMIN)
    first = (await auth_app.jwks())[0]["kid"]
    new, published = await auth_app.rotate_signing_key(admin)
    assert published == [new.kid, first]
    assert new.active_from == clock.now() + AuthPolicy().signing_key_lead
    # Published, not yet signing: every JWKS cache gets the kid before any token carries it.
    session = await auth_app.login("alice", "correct horse")
    assert jwt.get_unverified_header(session.token)["kid"] == first
    with pytest.raises(FailedPreconditionError) as pending:
        await auth_app.rotate_signing_key(admin)
    assert pending.value.reason == "SIGNING_KEY_PENDING"
    clock.advance(seconds=AuthPolicy().signing_key_lead.total_seconds())
    session = await auth_app.login("alice", "correct horse")
    assert jwt.get_unverified_header(session.token)["kid"] == new.kid
    assert [k["kid"] for k in await auth_app.jwks()] == [new.kid, first]
    third, published = await auth_app.rotate_signing_key(admin)
    assert published == [third.kid, new.kid, first]
    clock.advance(seconds=AuthPolicy().signing_key_lead.total_seconds())
    assert [k["kid"] for k in await auth_app.jwks()] == [third.kid, new.kid]


def test_the_rotation_lead_outlasts_two_edge_jwks_refetches() -> None:
    # The edge cannot refetch on an unknown kid (Envoy 1.40); it refetches every
    # JWKS_CACHE_SECONDS. A lead of two periods covers one failed or slow fetch.
    assert AuthPolicy().signing_key_lead.total_seconds() >= 2 * JWKS_CACHE_SECONDS
    assert AuthSettings().signing_key_lead_seconds == AuthPolicy().signing_key_lead.total_seconds()


async def test_only_admin_rotates_signing_keys(auth_app: AuthApp) -> None:
    user_id = await register(auth_app)
    with pytest.raises(PermissionDeniedError):
        await auth_app.rotate_signing_key(caller_of(user_id))


async def test_api_key_secret_is_returned_once_and_stored_hashed(
    auth_app: AuthApp, memory_store: InMemoryAuthStore
) -> None:
    user_id = await register(auth_app)
    issued = await auth_app.create_api_key(caller_of(user_id), user_id, "ci", None)
    assert issued.secret.startswith("lt_")
    assert len(issued.secret) >= 3 + 43  # 32 random bytes, base64url
    stored = await memory_store.get_api_key_by_hash(hash_api_key(issued.secret))
    assert stored is not None
    assert stored.key_hash != issued.secret
    listed = (await auth_app.list_api_keys(caller_of(user_id), user_id)).items
    assert [k.id for k in listed] == [issued.key.id]
    assert issued.secret not in repr(listed)
    assert listed[0].prefix == issued.secret[:11]


async def test_api_key_validates_to_owner_until_revoked(auth_app: AuthApp) -> None:
    user_id = await register(auth_app)
    me = caller_of(user_id)
    issued = await auth_app.create_api_key(me, user_id, "", None)
    owner = await auth_app.validate_api_key(issued.secret)
    assert owner.key.user_id == user_id
    assert owner.roles == frozenset({"USER"})
    await auth_app.revoke_api_key(me, user_id, issued.key.id)
    with pytest.raises(UnauthenticatedError) as info:
        await auth_app.validate_api_key(issued.secret)
    assert info.value.reason == "INVALID_API_KEY"
    assert (await auth_app.list_api_keys(me, user_id)).items == []
    with pytest.raises(NotFoundError):
        await auth_app.revoke_api_key(me, user_id, issued.key.id)


async def test_api_key_expires(auth_app: AuthApp, clock: FakeClock) -> None:
    user_id = await register(auth_app)
    issued = await auth_app.create_api_key(
        caller_of(user_id), user_id, "short", clock.now() + timedelta(minutes=5)
    )
    await auth_app.validate_api_key(issued.secret)
    clock.advance(minutes=5)
    with pytest.raises(UnauthenticatedError) as info:
        await auth_app.validate_api_key(issued.secret)
    assert info.value.reason == "API_KEY_EXPIRED"


async def test_api_key_expiry_must_be_in_the_future(auth_app: AuthApp, clock: FakeClock) -> None:
    user_id = await register(auth_app)
    with pytest.raises(InvalidArgumentError) as info:
        await auth_app.create_api_key(caller_of(user_id), user_id, "", clock.now())
    assert "expires_at" in violations(info.value)


async def test_unknown_or_blank_api_key_is_rejected(auth_app: AuthApp) -> None:
    with pytest.raises(UnauthenticatedError) as blank:
        await auth_app.validate_api_key("  ")
    assert blank.value.reason == "MISSING_API_KEY"
    with pytest.raises(UnauthenticatedError) as unknown:
        await auth_app.validate_api_key("lt_" + "A" * 43)
    assert unknown.value.reason == "INVALID_API_KEY"


async def test_users_manage_only_their_own_keys_but_admin_manages_any(auth_app: AuthApp) -> None:
    alice = await register(auth_app, "alice")
    bob = await register(auth_app, "bob")
    with pytest.raises(PermissionDeniedError):
        await auth_app.create_api_key(caller_of(bob), alice, "", None)
    with pytest.raises(PermissionDeniedError):
        await auth_app.list_api_keys(caller_of(bob), alice)
    issued = await auth_app.create_api_key(caller_of(bob, ADMIN), alice, "by admin", None)
    assert issued.key.user_id == alice
    with pytest.raises(PermissionDeniedError):
        await auth_app.revoke_api_key(caller_of(bob), alice, issued.key.id)
    await auth_app.revoke_api_key(caller_of(bob, ADMIN), alice, issued.key.id)


async def test_revoking_someone_elses_key_id_under_own_user_is_not_found(
    auth_app: AuthApp,
) -> None:
    alice = await register(auth_app, "alice")
    bob = await register(auth_app, "bob")
    issued = await auth_app.create_api_key(caller_of(alice), alice, "", None)
    with pytest.raises(NotFoundError):
        await auth_app.revoke_api_key(caller_of(bob), bob, issued.key.id)
    await auth_app.validate_api_key(issued.secret)


async def test_api_key_calls_reject_malformed_ids(auth_app: AuthApp) -> None:
    alice = await register(auth_app)
    with pytest.raises(InvalidArgumentError) as info:
        await auth_app.revoke_api_key(caller_of(alice), alice, "not-a-uuid")
    assert violations(info.value) == {"api_key_id": "must be a UUID"}
    with pytest.raises(InvalidArgumentError):
        await auth_app.list_api_keys(caller_of(alice), "")


async def test_org_owner_manages_members_and_members_see_each_other(auth_app: AuthApp) -> None:
    alice = await register(auth_app, "alice")
    bob = await register(auth_app, "bob")
    carol = await register(auth_app, "carol")
    org = await auth_app.create_org(caller_of(alice), "acme")
    await auth_app.add_member(caller_of(alice), org.id, bob)
    with pytest.raises(PermissionDeniedError):
        await auth_app.add_member(caller_of(bob), org.id, carol)
    members = (await auth_app.list_members(caller_of(bob), org.id)).items
    assert [(m.username, m.role) for m in members] == [("alice", "OWNER"), ("bob", "MEMBER")]
    with pytest.raises(PermissionDeniedError):
        await auth_app.list_members(caller_of(carol), org.id)
    assert [o.name for o in (await auth_app.list_my_orgs(caller_of(bob))).items] == ["acme"]
    await auth_app.remove_member(caller_of(alice), org.id, bob)
    assert (await auth_app.list_my_orgs(caller_of(bob))).items == []


async def test_admin_manages_any_org_and_owner_cannot_be_removed(auth_app: AuthApp) -> None:
    alice = await register(auth_app, "alice")
    admin = await register(auth_app, "root")
    org = await auth_app.create_org(caller_of(alice), "acme")
    with pytest.raises(FailedPreconditionError):
        await auth_app.remove_member(caller_of(admin, ADMIN), org.id, alice)
    member = await auth_app.add_member(caller_of(admin, ADMIN), org.id, admin)
    assert member.role == "MEMBER"


async def test_members_may_leave_and_duplicates_are_rejected(auth_app: AuthApp) -> None:
    alice = await register(auth_app, "alice")
    bob = await register(auth_app, "bob")
    org = await auth_app.create_org(caller_of(alice), "acme")
    await auth_app.add_member(caller_of(alice), org.id, bob)
    with pytest.raises(AlreadyExistsError):
        await auth_app.add_member(caller_of(alice), org.id, bob)
    await auth_app.remove_member(caller_of(bob), org.id, bob)
    with pytest.raises(NotFoundError):
        await auth_app.remove_member(caller_of(alice), org.id, bob)
    with pytest.raises(AlreadyExistsError):
        await auth_app.create_org(caller_of(bob), "acme")


async def test_org_calls_name_missing_things(auth_app: AuthApp) -> None:
    alice = await register(auth_app)
    with pytest.raises(NotFoundError):
        await auth_app.add_member(caller_of(alice), "00000000-0000-0000-0000-000000000001", alice)
    org = await auth_app.create_org(caller_of(alice), "acme")
    with pytest.raises(NotFoundError):
        await auth_app.add_member(caller_of(alice), org.id, "00000000-0000-0000-0000-000000000002")
    with pytest.raises(InvalidArgumentError):
        await auth_app.create_org(caller_of(alice), " ")


async def test_grant_role_bootstraps_an_admin(auth_app: AuthApp) -> None:
    await register(auth_app)
    user = await auth_app.grant_role("alice", ADMIN)
    assert user.roles == frozenset({"USER", "ADMIN"})
    session = await auth_app.login("alice", "correct horse")
    assert session.user.roles == frozenset({"USER", "ADMIN"})
    with pytest.raises(NotFoundError):
        await auth_app.grant_role("nobody", ADMIN)


async def test_unknown_and_impossible_usernames_still_cost_a_hash_verification(
    auth_app: AuthApp, hasher: FakePasswordHasher
) -> None:
    for name in ("nobody", "bad\x00name", "x" * 500):
        with pytest.raises(UnauthenticatedError):
            await auth_app.login(name, "whatever1")
    assert hasher.verified == [None, None, None]  # verified against the dummy hash each time


async def test_login_rehashes_a_password_hashed_with_old_parameters(
    memory_store: InMemoryAuthStore, clock: FakeClock
) -> None:
    crypto = FakeTokenCrypto()

    def app_with(cost: int) -> AuthApp:
        return make_app(memory_store, clock, FakePasswordHasher(cost=cost), crypto)

    old = app_with(1)
    await old.ensure_signing_key()
    user_id = (await old.register("alice", "alice@example.com", "correct horse")).user.id
    await app_with(2).login("alice", "correct horse")
    stored = await memory_store.get_user(user_id)
    assert stored is not None
    assert stored.password_hash.startswith("$fake$c=2$")
    await old.login("alice", "correct horse")  # still the same password


@pytest.mark.parametrize(
    ("field", "call"),
    [
        ("email", lambda app, me: app.register("bob", "bob\x00@example.com", "correct horse")),
        ("username", lambda app, me: app.register("bob\x00", "bob@example.com", "correct horse")),
        ("password", lambda app, me: app.register("bob", "bob@example.com", "correct\x00horse")),
        ("name", lambda app, me: app.create_org(caller_of(me), "acme\x00")),
        ("name", lambda app, me: app.create_api_key(caller_of(me), me, "key\x1b[31m", None)),
    ],
)
async def test_control_characters_are_invalid_arguments(
    auth_app: AuthApp, field: str, call: object
) -> None:
    me = await register(auth_app)
    with pytest.raises(InvalidArgumentError) as info:
        await call(auth_app, me)  # type: ignore[operator]
    assert field in violations(info.value)
