"""Input rules of issue 6: org and user names, invisible characters, password whitespace,
per-user caps and paging, on the in-memory store and fakes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from leaky_tokens.auth.adapters.in_memory_auth_store import InMemoryAuthStore
from leaky_tokens.auth.domain import paging
from leaky_tokens.auth.domain.model import User
from leaky_tokens.auth.domain.service import AuthApp, AuthPolicy
from leaky_tokens.runtime.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    UnauthenticatedError,
    Validator,
)
from leaky_tokens.runtime.identity import Caller
from tests.conftest import make_app
from tests.support.fakes import FakeClock, FakePasswordHasher

INVISIBLE = [
    "\u202e",  # right-to-left override (was accepted in org names)
    "\u2066",  # left-to-right isolate
    "\u200f",  # right-to-left mark
    "\u061c",  # Arabic letter mark
    "\u200b",  # zero-width space
    "\u2060",  # word joiner
    "\ufeff",  # zero-width no-break space
    "\u2028",  # line separator (Zl)
    "\u2029",  # paragraph separator (Zp)
    "\x85",  # next line (Cc)
    "\u3164",  # Hangul filler (Lo, renders blank)
]


def me(user_id: str, *roles: str) -> Caller:
    return Caller(user_id=user_id, roles=frozenset(roles or ("USER",)), org_ids=frozenset())


async def register(app: AuthApp, name: str) -> str:
    return (await app.register(name, f"{name}@example.com", "correct horse")).user.id


def fields(error: InvalidArgumentError) -> set[str]:
    return {v.field for v in error.violations}


async def capped_app(clock: FakeClock, keys: int = 3, orgs: int = 2) -> AuthApp:
    policy = AuthPolicy(max_api_keys_per_user=keys, max_owned_orgs_per_user=orgs)
    app = make_app(InMemoryAuthStore(), clock, policy=policy)
    await app.ensure_signing_key()
    return app


# -- organization and user names ----------------------------------------------------------


async def test_org_names_are_unique_case_insensitively(auth_app: AuthApp) -> None:
    alice = await register(auth_app, "alice")
    bob = await register(auth_app, "bob")
    await auth_app.create_org(me(alice), "Acme")
    for clash in ("acme", "ACME", " aCmE "):
        with pytest.raises(AlreadyExistsError) as info:
            await auth_app.create_org(me(bob), clash)
        assert info.value.reason == "ORG_NAME_TAKEN"


@pytest.mark.parametrize("char", INVISIBLE)
async def test_invisible_and_bidi_characters_are_refused_in_every_name(
    auth_app: AuthApp, char: str
) -> None:
    alice = await register(auth_app, "alice")
    with pytest.raises(InvalidArgumentError) as org:
        await auth_app.create_org(me(alice), f"ac{char}me")
    assert fields(org.value) == {"name"}
    with pytest.raises(InvalidArgumentError) as key:
        await auth_app.create_api_key(me(alice), alice, f"ci{char}key", None)
    assert fields(key.value) == {"name"}
    with pytest.raises(InvalidArgumentError) as user:
        await auth_app.register(f"bo{char}b", "bob@example.com", "correct horse")
    assert fields(user.value) == {"username"}
    assert "invisible" in user.value.violations[0].description


@pytest.mark.parametrize(
    "clash", ["Cafe\u0301", "CAF\u00c9", "\uff23\uff41\uff46\u00e9", " cafe\u0301 "]
)
async def test_lookalike_org_names_are_one_name(auth_app: AuthApp, clash: str) -> None:
    alice = await register(auth_app, "alice")
    await auth_app.create_org(me(alice), "Caf\u00e9")  # é as one code point
    with pytest.raises(AlreadyExistsError) as info:
        await auth_app.create_org(me(alice), clash)  # combining accent, fullwidth, case
    assert info.value.reason == "ORG_NAME_TAKEN"


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("\u2800", "visible"),  # Braille blank: was accepted as an org name
        ("\u2800 \u2800", "visible"),
        ("ac\U000e0080me", "unassigned"),  # Cn
        ("ac\ue000me", "private-use"),  # Co
        ("\U000f0000", "private-use"),  # Co, plane 15
    ],
)
async def test_blank_unassigned_and_private_use_names_are_refused(
    auth_app: AuthApp, name: str, says: str
) -> None:
    alice = await register(auth_app, "alice")
    with pytest.raises(InvalidArgumentError) as org:
        await auth_app.create_org(me(alice), name)
    assert fields(org.value) == {"name"}
    assert says.split("-")[0] in org.value.violations[0].description
    with pytest.raises(InvalidArgumentError) as key:
        await auth_app.create_api_key(me(alice), alice, name, None)
    assert fields(key.value) == {"name"}


async def test_an_org_name_whose_key_outgrows_the_column_is_refused(auth_app: AuthApp) -> None:
    alice = await register(auth_app, "alice")
    with pytest.raises(InvalidArgumentError) as org:
        await auth_app.create_org(me(alice), "\ufdfa" * 30)  # NFKC: 18 characters each
    assert "normalised" in org.value.violations[0].description


async def test_visible_unicode_org_names_are_still_welcome(auth_app: AuthApp) -> None:
    alice = await register(auth_app, "alice")
    org = await auth_app.create_org(me(alice), "Zürich Café 東京")
    assert org.name == "Zürich Café 東京"


@pytest.mark.parametrize(
    "name", ["...", "-..-", "a..b", ".abc", "abc.", "_abc", "a-_b", "ab", "x" * 33, "al ice"]
)
async def test_usernames_outside_the_pattern_are_refused(auth_app: AuthApp, name: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        await auth_app.register(name, "x@example.com", "correct horse")
    assert fields(info.value) == {"username"}


@pytest.mark.parametrize("name", ["abc", "a.b-c_d", "Alice99", "x" * 32, "j.r.r.tolkien"])
async def test_usernames_inside_the_pattern_register(auth_app: AuthApp, name: str) -> None:
    session = await auth_app.register(name, "x@example.com", "correct horse")
    assert session.user.username == name


async def test_a_name_registered_under_the_old_rule_still_logs_in(
    auth_app: AuthApp, memory_store: InMemoryAuthStore, hasher: FakePasswordHasher, clock: FakeClock
) -> None:
    legacy = User(
        id="00000000-0000-0000-0000-000000000001",
        username="old..name",
        email="old@example.com",
        password_hash=await hasher.hash("correct horse"),
        created_at=clock.now(),
    )
    await memory_store.add_user(legacy, ["USER"])
    session = await auth_app.login("OLD..NAME", "correct horse")
    assert session.user.id == legacy.id


# -- password whitespace ------------------------------------------------------------------


async def test_passwords_are_taken_exactly_as_given_in_register_and_login(
    auth_app: AuthApp,
) -> None:
    await auth_app.register("alice", "alice@example.com", "  correct horse ")
    for altered in ("correct horse", "  correct horse", "correct horse "):
        with pytest.raises(UnauthenticatedError):
            await auth_app.login("alice", altered)
    session = await auth_app.login("alice", "  correct horse ")
    assert session.user.username == "alice"


async def test_an_all_whitespace_password_is_refused_by_register_and_login(
    auth_app: AuthApp,
) -> None:
    blank = " \t " * 4
    with pytest.raises(InvalidArgumentError) as registering:
        await auth_app.register("alice", "alice@example.com", blank)
    with pytest.raises(InvalidArgumentError) as logging_in:
        await auth_app.login("alice", blank)
    assert registering.value.violations == logging_in.value.violations
    assert fields(registering.value) == {"password"}


# -- per-user caps ------------------------------------------------------------------------


async def test_active_api_keys_per_user_are_capped(clock: FakeClock) -> None:
    app = await capped_app(clock, keys=3)
    alice = await register(app, "alice")
    issued = [await app.create_api_key(me(alice), alice, f"k{n}", None) for n in range(3)]
    with pytest.raises(FailedPreconditionError) as info:
        await app.create_api_key(me(alice), alice, "one too many", None)
    assert info.value.reason == "API_KEY_LIMIT"
    assert info.value.metadata == {"limit": "3"}
    await app.revoke_api_key(me(alice), alice, issued[0].key.id)
    await app.create_api_key(me(alice), alice, "after revoking", None)
    bob = await register(app, "bob")
    await app.create_api_key(me(bob), bob, "bob's own", None)  # the cap is per user


async def test_expired_keys_do_not_count_against_the_cap(clock: FakeClock) -> None:
    app = await capped_app(clock, keys=2)
    alice = await register(app, "alice")
    soon = clock.now() + timedelta(minutes=1)
    await app.create_api_key(me(alice), alice, "short", soon)
    await app.create_api_key(me(alice), alice, "long", None)
    with pytest.raises(FailedPreconditionError):
        await app.create_api_key(me(alice), alice, "third", None)
    clock.advance(minutes=1)
    await app.create_api_key(me(alice), alice, "third", None)


async def test_owned_orgs_per_user_are_capped_but_memberships_are_not(clock: FakeClock) -> None:
    app = await capped_app(clock, orgs=2)
    alice = await register(app, "alice")
    bob = await register(app, "bob")
    await app.create_org(me(alice), "a1")
    await app.create_org(me(alice), "a2")
    with pytest.raises(FailedPreconditionError) as info:
        await app.create_org(me(alice), "a3")
    assert info.value.reason == "OWNED_ORG_LIMIT"
    for name in ("b1", "b2"):
        org = await app.create_org(me(bob), name)
        await app.add_member(me(bob), org.id, alice)
    assert len((await app.list_my_orgs(me(alice))).items) == 4


# -- paging -------------------------------------------------------------------------------


async def test_api_keys_page_in_a_stable_order_without_repeats(
    auth_app: AuthApp, clock: FakeClock
) -> None:
    alice = await register(auth_app, "alice")
    created = []
    for n in range(7):
        created.append(await auth_app.create_api_key(me(alice), alice, f"k{n}", None))
        if n % 2:
            clock.advance(seconds=1)  # pairs share a timestamp: ties are ordered by id
    full = (await auth_app.list_api_keys(me(alice), alice)).items
    assert sorted(k.id for k in full) == sorted(i.key.id for i in created)
    seen, token, pages = [], "", 0
    while True:
        page = await auth_app.list_api_keys(me(alice), alice, 3, token)
        seen += page.items
        pages += 1
        token = page.next_token
        if not token:
            break
        # A key created between pages lands at the front: it neither repeats nor shifts.
        if pages == 1:
            clock.advance(seconds=5)
            await auth_app.create_api_key(me(alice), alice, "meanwhile", None)
    assert [k.id for k in seen] == [k.id for k in full]
    assert pages == 3


async def test_orgs_and_members_page_by_name(auth_app: AuthApp) -> None:
    owner = await register(auth_app, "owner")
    names = ["delta", "Alpha", "charlie", "Bravo", "echo"]
    for name in names:
        await auth_app.create_org(me(owner), name)
    first = await auth_app.list_my_orgs(me(owner), 2)
    second = await auth_app.list_my_orgs(me(owner), 2, first.next_token)
    third = await auth_app.list_my_orgs(me(owner), 2, second.next_token)
    listed = [o.name for o in first.items + second.items + third.items]
    assert listed == ["Alpha", "Bravo", "charlie", "delta", "echo"]
    assert third.next_token == ""
    org = (await auth_app.create_org(me(owner), "club")).id
    for name in ("zed", "Amy", "bob"):
        await auth_app.add_member(me(owner), org, await register(auth_app, name))
    page = await auth_app.list_members(me(owner), org, 3)
    rest = await auth_app.list_members(me(owner), org, 3, page.next_token)
    assert [m.username for m in page.items + rest.items] == ["Amy", "bob", "owner", "zed"]
    assert rest.next_token == ""


async def test_bad_page_arguments_are_invalid_arguments(auth_app: AuthApp) -> None:
    alice = await register(auth_app, "alice")
    org = (await auth_app.create_org(me(alice), "acme")).id
    for token in ("garbage!", "e30", paging.encode_token("orgs", ["acme"])):
        with pytest.raises(InvalidArgumentError) as info:
            await auth_app.list_api_keys(me(alice), alice, 10, token)
        assert fields(info.value) == {"page_token"}
    with pytest.raises(InvalidArgumentError) as naive:
        await auth_app.list_api_keys(
            me(alice), alice, 10, paging.encode_token("api_keys", ["2026-01-01T00:00:00", "x"])
        )
    assert fields(naive.value) == {"page_token"}
    with pytest.raises(InvalidArgumentError) as negative:
        await auth_app.list_members(me(alice), org, -1)
    assert fields(negative.value) == {"page_size"}


def test_page_size_defaults_and_caps() -> None:
    v = Validator()
    assert paging.check_page_size(v, 0) == paging.DEFAULT_PAGE_SIZE == 50
    assert paging.check_page_size(v, 10_000) == paging.MAX_PAGE_SIZE == 200
    assert paging.check_page_size(v, 7) == 7
    assert v.violations == []
