"""The AuthStore contract, run against the in-memory store, SQLite and a real PostgreSQL: all
three must behave alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from leaky_tokens.auth.adapters.in_memory_auth_store import InMemoryAuthStore
from leaky_tokens.auth.adapters.sql_auth_store import SqlAuthStore, make_engine
from leaky_tokens.auth.domain.model import ApiKey, Membership, Organization, SigningKey, User
from leaky_tokens.auth.domain.ports import DuplicateError, LimitReachedError
from leaky_tokens.runtime.errors import UnavailableError
from tests.conftest import fresh_store

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


Store = InMemoryAuthStore | SqlAuthStore


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield InMemoryAuthStore()
        return
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    sql_store = await fresh_store(url)
    yield sql_store
    await sql_store.close()


def user(n: int, name: str | None = None) -> User:
    return User(
        id=f"00000000-0000-0000-0000-{n:012d}",
        username=name or f"user{n}",
        email=f"user{n}@example.com",
        password_hash="$argon2id$fake",
        created_at=T0,
    )


def key(n: int, owner: User, created: datetime = T0, **extra: object) -> ApiKey:
    return ApiKey(
        id=f"10000000-0000-0000-0000-{n:012d}",
        user_id=owner.id,
        name=f"key{n}",
        prefix="lt_abcdefgh",
        key_hash=f"{n:064x}",
        created_at=created,
        **extra,  # type: ignore[arg-type]
    )


async def test_user_round_trips_with_roles_and_aware_utc_times(store: Store) -> None:
    alice = user(1, "Alice")
    await store.add_user(alice, ["USER", "ADMIN"])
    loaded = await store.get_user(alice.id)
    assert loaded is not None
    assert loaded.username == "Alice"
    assert loaded.roles == frozenset({"USER", "ADMIN"})
    assert loaded.created_at == T0
    assert loaded.created_at.tzinfo is not None
    assert await store.get_user_by_username("alice") == loaded
    assert await store.get_user("00000000-0000-0000-0000-000000000099") is None


async def test_duplicate_username_and_email_name_the_field(store: Store) -> None:
    await store.add_user(user(1, "alice"), ["USER"])
    clash_name = User(**{**user(2, "ALICE").__dict__})
    with pytest.raises(DuplicateError) as by_name:
        await store.add_user(clash_name, ["USER"])
    assert by_name.value.field == "username"
    clash_email = User(**{**user(3).__dict__, "email": "user1@example.com"})
    with pytest.raises(DuplicateError) as by_email:
        await store.add_user(clash_email, ["USER"])
    assert by_email.value.field == "email"
    assert await store.get_user(clash_name.id) is None


async def test_concurrent_registrations_of_one_name_admit_exactly_one(store: Store) -> None:
    attempts = [user(n, "racer") for n in range(1, 9)]
    results = await asyncio.gather(
        *(store.add_user(u, ["USER"]) for u in attempts), return_exceptions=True
    )
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, DuplicateError) for r in results if r is not None)


async def test_grant_role_is_idempotent(store: Store) -> None:
    alice = user(1)
    await store.add_user(alice, ["USER"])
    await store.grant_role(alice.id, "ADMIN")
    await store.grant_role(alice.id, "ADMIN")
    loaded = await store.get_user(alice.id)
    assert loaded is not None
    assert loaded.roles == frozenset({"USER", "ADMIN"})


async def test_revoke_role_takes_only_that_role_and_says_whether_it_was_held(store: Store) -> None:
    alice = user(1)
    await store.add_user(alice, ["USER", "ADMIN"])
    assert await store.revoke_role(alice.id, "ADMIN") is True
    assert await store.revoke_role(alice.id, "ADMIN") is False
    loaded = await store.get_user(alice.id)
    assert loaded is not None
    assert loaded.roles == frozenset({"USER"})


async def test_api_keys_list_newest_first_and_revocation_hides_them(store: Store) -> None:
    alice, bob = user(1), user(2)
    await store.add_user(alice, ["USER"])
    await store.add_user(bob, ["USER"])
    older = key(1, alice, T0, expires_at=T0 + timedelta(days=1))
    newer = key(2, alice, T0 + timedelta(seconds=1))
    await store.add_api_key(older)
    await store.add_api_key(newer)
    await store.add_api_key(key(3, bob))
    assert [k.id for k in await store.list_api_keys(alice.id)] == [newer.id, older.id]
    assert (await store.get_api_key_by_hash(older.key_hash)) == older
    assert not await store.revoke_api_key(bob.id, older.id, T0)  # not bob's key
    assert await store.revoke_api_key(alice.id, older.id, T0 + timedelta(hours=1))
    assert not await store.revoke_api_key(alice.id, older.id, T0)  # already revoked
    assert [k.id for k in await store.list_api_keys(alice.id)] == [newer.id]
    revoked = await store.get_api_key_by_hash(older.key_hash)
    assert revoked is not None
    assert revoked.revoked_at == T0 + timedelta(hours=1)


async def test_orgs_and_memberships(store: Store) -> None:
    alice, bob = user(1, "alice"), user(2, "bob")
    await store.add_user(alice, ["USER"])
    await store.add_user(bob, ["USER"])
    acme = Organization("20000000-0000-0000-0000-000000000001", "acme", alice.id, T0)
    zeta = Organization("20000000-0000-0000-0000-000000000002", "zeta", bob.id, T0)
    await store.add_org(zeta, Membership(zeta.id, bob.id, "OWNER", T0))
    await store.add_org(acme, Membership(acme.id, alice.id, "OWNER", T0))
    with pytest.raises(DuplicateError) as dup:
        await store.add_org(
            Organization("20000000-0000-0000-0000-000000000003", "acme", bob.id, T0),
            Membership("20000000-0000-0000-0000-000000000003", bob.id, "OWNER", T0),
        )
    assert dup.value.field == "name"
    await store.add_member(Membership(acme.id, bob.id, "MEMBER", T0))
    with pytest.raises(DuplicateError):
        await store.add_member(Membership(acme.id, bob.id, "MEMBER", T0))
    assert [o.name for o in await store.list_orgs_for_user(bob.id)] == ["acme", "zeta"]
    assert await store.get_org(acme.id) == acme
    members = await store.list_members(acme.id)
    assert [(m.username, m.role) for m in members] == [("alice", "OWNER"), ("bob", "MEMBER")]
    membership = await store.get_membership(acme.id, bob.id)
    assert membership is not None
    assert membership.joined_at == T0
    assert await store.remove_member(acme.id, bob.id)
    assert not await store.remove_member(acme.id, bob.id)
    assert await store.get_membership(acme.id, bob.id) is None


async def test_signing_keys_newest_first_even_with_equal_timestamps(store: Store) -> None:
    for kid in ("k-b", "k-a", "k-c"):
        await store.add_signing_key(
            SigningKey(kid=kid, private_pem=b"pem-" + kid.encode(), created_at=T0, active_from=T0)
        )
    keys = await store.list_signing_keys(2)
    assert [k.kid for k in keys] == ["k-c", "k-a"]
    assert keys[0].private_pem == b"pem-k-c"


async def test_duplicate_field_is_found_by_constraint_not_by_the_clashing_text(
    store: Store,
) -> None:
    await store.add_user(
        User(**{**user(1, "first").__dict__, "email": "username@example.com"}), ["USER"]
    )
    tricky = User(**{**user(2, "second").__dict__, "email": "username@example.com"})
    with pytest.raises(DuplicateError) as info:
        await store.add_user(tricky, ["USER"])
    assert info.value.field == "email"


async def test_store_errors_never_carry_secret_parameters(store: Store) -> None:
    orphan = key(9, user(42))  # its user does not exist: a foreign-key violation
    with pytest.raises((IntegrityError, LookupError)) as info:
        await store.add_api_key(orphan)
    assert orphan.key_hash not in str(info.value)


async def test_concurrent_role_grants_all_succeed(store: Store) -> None:
    alice = user(1)
    await store.add_user(alice, ["USER"])
    await asyncio.gather(*(store.grant_role(alice.id, "ADMIN") for _ in range(8)))
    loaded = await store.get_user(alice.id)
    assert loaded is not None
    assert loaded.roles == frozenset({"USER", "ADMIN"})


async def test_password_hash_can_be_replaced(store: Store) -> None:
    alice = user(1)
    await store.add_user(alice, ["USER"])
    await store.set_password_hash(alice.id, "$argon2id$new")
    loaded = await store.get_user(alice.id)
    assert loaded is not None
    assert loaded.password_hash == "$argon2id$new"


async def test_lost_database_is_unavailable(tmp_path: Path) -> None:
    dead = SqlAuthStore(make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none"))
    with pytest.raises(UnavailableError):
        await dead.get_user("00000000-0000-0000-0000-000000000001")
    await dead.close()


def org(n: int, name: str, owner: User) -> tuple[Organization, Membership]:
    org_id = f"20000000-0000-0000-0000-{n:012d}"
    return Organization(org_id, name, owner.id, T0), Membership(org_id, owner.id, "OWNER", T0)


async def test_org_names_clash_case_insensitively(store: Store) -> None:
    alice = user(1)
    await store.add_user(alice, ["USER"])
    await store.add_org(*org(1, "Zürich Acme", alice))
    for n, clash in enumerate(("zürich acme", "ZÜRICH ACME"), start=2):
        with pytest.raises(DuplicateError) as dup:
            await store.add_org(*org(n, clash, alice))
        assert dup.value.field == "name"
    assert [o.name for o in await store.list_orgs_for_user(alice.id)] == ["Zürich Acme"]


async def test_lookalike_org_names_clash(store: Store) -> None:
    alice = user(1)
    await store.add_user(alice, ["USER"])
    await store.add_org(*org(1, "Caf\u00e9", alice))  # é as one code point
    # e + combining acute, the fullwidth form, and a case variant of each: all the same name.
    for n, clash in enumerate(("Cafe\u0301", "\uff23\uff41\uff46\u00e9", "CAFE\u0301"), 2):
        with pytest.raises(DuplicateError) as dup:
            await store.add_org(*org(n, clash, alice))
        assert dup.value.field == "name"
    assert [o.name for o in await store.list_orgs_for_user(alice.id)] == ["Caf\u00e9"]


async def test_names_sort_by_code_point_of_their_key_everywhere(store: Store) -> None:
    # A locale collation would put "ab" before "a-c" (it skips punctuation): every store
    # must agree on one order, or pages would differ between backends.
    names = ["b", "ab", "A-C", "a.b", "Ä"]
    owner = user(1, "owner")
    await store.add_user(owner, ["USER"])
    for n, name in enumerate(names, start=1):
        await store.add_org(*org(n, name, owner))
        member = user(10 + n, name.replace("Ä", "ae").replace("A-C", "a-c") + "x")
        await store.add_user(member, ["USER"])
        await store.add_member(Membership(org(1, "", owner)[0].id, member.id, "MEMBER", T0))
    expected = sorted(names, key=str.casefold)
    assert [o.name for o in await store.list_orgs_for_user(owner.id)] == expected
    usernames = [m.username for m in await store.list_members(org(1, "", owner)[0].id)]
    assert usernames == sorted(usernames, key=str.casefold)
    assert usernames.index("a-cx") < usernames.index("abx")


async def test_lists_page_after_a_position(store: Store) -> None:
    alice = user(1, "alice")
    await store.add_user(alice, ["USER"])
    tied = T0 + timedelta(seconds=1)
    for n, created in ((1, T0), (2, tied), (3, tied), (4, T0 + timedelta(seconds=2))):
        await store.add_api_key(key(n, alice, created))
    ids = [k.id for k in await store.list_api_keys(alice.id)]
    assert ids == [key(4, alice).id, key(2, alice).id, key(3, alice).id, key(1, alice).id]
    first = await store.list_api_keys(alice.id, limit=2)
    assert [k.id for k in first] == ids[:2]
    rest = await store.list_api_keys(alice.id, after=(first[-1].created_at, first[-1].id))
    assert [k.id for k in rest] == ids[2:]
    for n, name in enumerate(("beta", "Alpha", "gamma"), start=1):
        await store.add_org(*org(n, name, alice))
    after_alpha = await store.list_orgs_for_user(alice.id, limit=1, after="alpha")
    assert [o.name for o in after_alpha] == ["beta"]
    members = await store.list_members(org(1, "", alice)[0].id, after="alice")
    assert members == []


async def test_active_key_cap_counts_unrevoked_unexpired_keys(store: Store) -> None:
    alice = user(1)
    await store.add_user(alice, ["USER"])
    await store.add_api_key(key(1, alice, T0, expires_at=T0 + timedelta(seconds=1)))
    await store.add_api_key(key(2, alice, T0), max_active=2)
    with pytest.raises(LimitReachedError) as info:
        await store.add_api_key(key(3, alice, T0), max_active=2)
    assert info.value.limit == 2
    assert await store.get_api_key_by_hash(key(3, alice).key_hash) is None  # nothing written
    later = T0 + timedelta(seconds=1)  # key 1 has expired by then
    await store.add_api_key(key(4, alice, later), max_active=2)
    await store.revoke_api_key(alice.id, key(2, alice).id, later)
    await store.add_api_key(key(5, alice, later), max_active=2)


async def test_concurrent_capped_inserts_never_overshoot(store: Store) -> None:
    alice = user(1)
    await store.add_user(alice, ["USER"])
    for n in range(3):
        await store.add_api_key(key(n, alice))
    results = await asyncio.gather(
        *(store.add_api_key(key(10 + n, alice), max_active=5) for n in range(8)),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 2
    assert all(isinstance(r, LimitReachedError) for r in results if r is not None)
    assert len(await store.list_api_keys(alice.id)) == 5
    orgs = await asyncio.gather(
        *(store.add_org(*org(n, f"org{n}", alice), max_owned=3) for n in range(8)),
        return_exceptions=True,
    )
    assert sum(r is None for r in orgs) == 3
    assert all(isinstance(r, LimitReachedError) for r in orgs if r is not None)
    assert len(await store.list_orgs_for_user(alice.id)) == 3
