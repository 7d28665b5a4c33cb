"""JwtVerifier: signature and claims, and the key-set cache policy, on a fake monotonic clock."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from leaky_tokens.runtime import errors
from leaky_tokens.runtime.jwt_verifier import JwtVerifier
from tests.support.jwks import KeySet


class FakeMonotonic:
    """Seconds that only pass when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def verifier_for(keys: KeySet, clock: FakeMonotonic | None = None) -> JwtVerifier:
    return JwtVerifier(keys.fetch, issuer="iss", audience="aud", monotonic=clock or FakeMonotonic())


async def test_valid_token_gives_caller_and_keys_are_cached() -> None:
    keys = KeySet()
    verifier = verifier_for(keys)
    caller = await verifier.verify(keys.token())
    await verifier.verify(keys.token())
    assert caller.user_id == "user-1"
    assert caller.roles == frozenset({"USER"})
    assert caller.org_ids == frozenset({"org-1"})
    assert keys.fetches == 1


async def test_unknown_kid_triggers_one_refresh_and_then_verifies() -> None:
    keys = KeySet()
    clock = FakeMonotonic()
    verifier = verifier_for(keys, clock)
    await verifier.verify(keys.token())
    keys.add("k2")
    clock.now += 2  # past the refresh interval, so no waiting
    caller = await verifier.verify(keys.token("k2"))
    assert caller.user_id == "user-1"
    assert keys.fetches == 2


async def test_made_up_kids_are_rejected_together_without_queueing() -> None:
    keys = KeySet()
    verifier = JwtVerifier(keys.fetch, issuer="iss", audience="aud", min_refresh_interval=0.2)
    await verifier.verify(keys.token())
    bogus = [
        jwt.encode({"sub": "x"}, keys.private["k1"], algorithm="RS256", headers={"kid": f"no-{n}"})
        for n in range(8)
    ]
    results = await asyncio.gather(*(verifier.verify(t) for t in bogus), return_exceptions=True)
    assert all(isinstance(r, errors.UnauthenticatedError) for r in results)
    # One refresh served all eight: not eight refreshes one interval apart.
    assert keys.fetches == 2
    # Within the interval a known-missing kid is refused without any fetch.
    with pytest.raises(errors.UnauthenticatedError):
        await verifier.verify(bogus[0])
    assert keys.fetches == 2


async def test_keys_the_issuer_stopped_publishing_stop_verifying() -> None:
    keys = KeySet()
    clock = FakeMonotonic()
    verifier = JwtVerifier(keys.fetch, issuer="iss", audience="aud", monotonic=clock, max_age=60)
    old_token = keys.token("k1")
    await verifier.verify(old_token)
    keys.add("k2")
    del keys.private["k1"]  # retired by rotation
    clock.now += 61
    with pytest.raises(errors.UnauthenticatedError) as info:
        await verifier.verify(old_token)
    assert info.value.reason == "UNKNOWN_KEY_ID"


async def test_jwks_outage_before_any_key_is_unavailable_not_unauthenticated() -> None:
    async def broken() -> list[dict[str, str]]:
        raise ConnectionError("auth is down")

    verifier = JwtVerifier(broken, issuer="iss", audience="aud")
    with pytest.raises(errors.UnavailableError):
        await verifier.verify(KeySet().token())


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k: k.token(exp=datetime.now(UTC) - timedelta(hours=1)), "TOKEN_EXPIRED"),
        (lambda k: k.token(iss="someone-else"), "INVALID_TOKEN"),
        (lambda k: k.token(aud="other"), "INVALID_TOKEN"),
        (
            lambda k: jwt.encode({"sub": "x"}, "s" * 32, algorithm="HS256", headers={"kid": "k1"}),
            "MALFORMED_TOKEN",
        ),
        (lambda k: "garbage", "MALFORMED_TOKEN"),
        (
            lambda k: jwt.encode({"sub": "x"}, "", algorithm="none", headers={"kid": "k1"}),
            "MALFORMED_TOKEN",
        ),
    ],
)
async def test_bad_tokens_are_rejected_with_a_reason(make: object, reason: str) -> None:
    keys = KeySet()
    with pytest.raises(errors.UnauthenticatedError) as info:
        await verifier_for(keys).verify(make(keys))  # type: ignore[operator]
    assert info.value.reason == reason


async def test_token_signed_by_a_foreign_key_with_a_known_kid_is_rejected() -> None:
    keys, impostor = KeySet(), KeySet()
    with pytest.raises(errors.UnauthenticatedError) as info:
        await verifier_for(keys).verify(impostor.token("k1"))
    assert info.value.reason == "INVALID_TOKEN"


async def test_known_key_is_refused_once_the_set_ages_past_max_age_and_the_key_is_gone() -> None:
    keys, clock = KeySet(), FakeMonotonic()
    verifier = JwtVerifier(keys.fetch, issuer="iss", audience="aud", monotonic=clock, max_age=30)
    old_token = keys.token("k1")
    await verifier.verify(old_token)
    keys.add("k2")
    del keys.private["k1"]
    clock.now += 30  # within the bound the cached set is used as is
    await verifier.verify(old_token)
    assert keys.fetches == 1
    clock.now += 0.5
    with pytest.raises(errors.UnauthenticatedError):
        await verifier.verify(old_token)
    assert keys.fetches == 2
    await verifier.verify(keys.token("k2"))


async def test_jwks_outage_keeps_the_old_set_for_the_grace_then_fails_closed() -> None:
    keys, clock = KeySet(), FakeMonotonic()
    verifier = JwtVerifier(
        keys.fetch, issuer="iss", audience="aud", monotonic=clock, max_age=30, outage_grace=20
    )
    token = keys.token()
    await verifier.verify(token)
    keys.down = True
    clock.now += 31  # stale; the refetch fails; still within the grace
    await verifier.verify(token)
    clock.now += 20  # 51 s old: past max_age + grace
    with pytest.raises(errors.UnavailableError) as info:
        await verifier.verify(token)
    assert info.value.reason == "JWKS_UNAVAILABLE"
    keys.down = False
    clock.now += 1  # past the refresh interval: the next call refetches and recovers
    await verifier.verify(token)


async def test_without_a_cache_every_verification_reads_the_source() -> None:
    keys = KeySet()
    verifier = JwtVerifier(keys.fetch, issuer="iss", audience="aud", max_age=0)
    old_token = keys.token("k1")
    await verifier.verify(old_token)
    await verifier.verify(old_token)
    assert keys.fetches == 2
    keys.add("k2")
    del keys.private["k1"]
    with pytest.raises(errors.UnauthenticatedError) as info:
        await verifier.verify(old_token)  # no clock moved: refused at once
    assert info.value.reason == "UNKNOWN_KEY_ID"


# The verified-token cache (ADR 0029).


class FakeWall:
    """Epoch seconds, starting at the real time (tokens are signed on it), moved by the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every token PyJWT checked in full (signature and claims)."""
    seen: list[str] = []
    real = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return seen


async def test_a_verified_token_is_answered_from_memory_until_it_expires(
    decodes: list[str],
) -> None:
    keys, wall = KeySet(), FakeWall()
    verifier = JwtVerifier(
        keys.fetch, issuer="iss", audience="aud", monotonic=FakeMonotonic(), wall=wall
    )
    exp = int(wall.now) + 300
    token = keys.token(exp=exp)
    first = await verifier.verify(token)
    assert await verifier.verify(token) == first
    assert len(decodes) == 1
    wall.now = exp + 30 - 0.5  # the default 30 s leeway, as PyJWT applies it
    assert await verifier.verify(token) == first
    wall.now = exp + 30
    with pytest.raises(errors.UnauthenticatedError) as info:
        await verifier.verify(token)
    assert info.value.reason == "TOKEN_EXPIRED"
    assert verifier.cached == 0
    assert len(decodes) == 1  # refused from what was remembered, not accepted again


async def test_a_clock_stepped_back_before_iat_checks_the_token_in_full(
    decodes: list[str],
) -> None:
    keys, wall = KeySet(), FakeWall()
    verifier = JwtVerifier(
        keys.fetch, issuer="iss", audience="aud", monotonic=FakeMonotonic(), wall=wall
    )
    token = keys.token()
    await verifier.verify(token)
    wall.now -= 3600
    await verifier.verify(token)  # PyJWT, on the real clock, accepts it again
    assert len(decodes) == 2


def _tampered(token: str, at: int) -> str:
    swap = "A" if token[at] != "A" else "B"
    return token[:at] + swap + token[at + 1 :]


async def test_a_token_with_one_character_changed_is_not_served_from_memory(
    decodes: list[str],
) -> None:
    keys = KeySet()
    verifier = verifier_for(keys)
    token = keys.token()
    await verifier.verify(token)
    header, payload, signature = token.split(".")
    middle_of_payload = len(header) + 1 + len(payload) // 2
    middle_of_signature = len(header) + len(payload) + 2 + len(signature) // 2
    for at in (len(header) // 2, middle_of_payload, middle_of_signature):
        with pytest.raises(errors.UnauthenticatedError):
            await verifier.verify(_tampered(token, at))
    assert verifier.cached == 1  # refusals are never remembered
    await verifier.verify(token)
    assert decodes.count(token) == 1


async def test_a_remembered_token_of_a_retired_key_is_refused_within_the_bound(
    decodes: list[str],
) -> None:
    keys, clock = KeySet(), FakeMonotonic()
    verifier = JwtVerifier(keys.fetch, issuer="iss", audience="aud", monotonic=clock, max_age=30)
    old_token = keys.token("k1")
    await verifier.verify(old_token)
    keys.add("k2")
    del keys.private["k1"]
    clock.now += 30  # the cached key set is still within max_age: accepted, as before
    await verifier.verify(old_token)
    assert len(decodes) == 1
    clock.now += 0.5  # the set is refetched first; k1 is gone
    with pytest.raises(errors.UnauthenticatedError) as info:
        await verifier.verify(old_token)
    assert info.value.reason == "UNKNOWN_KEY_ID"
    assert verifier.cached == 1  # still remembered, but every use checks its kid first
    with pytest.raises(errors.UnauthenticatedError):
        await verifier.verify(old_token)


async def test_a_new_key_under_the_same_kid_does_not_vouch_for_remembered_tokens() -> None:
    keys, clock = KeySet(), FakeMonotonic()
    verifier = JwtVerifier(keys.fetch, issuer="iss", audience="aud", monotonic=clock, max_age=30)
    old_token = keys.token("k1")
    await verifier.verify(old_token)
    keys.add("k1")  # a different key published under the same kid
    clock.now += 31
    with pytest.raises(errors.UnauthenticatedError) as info:
        await verifier.verify(old_token)
    assert info.value.reason == "INVALID_TOKEN"
    assert verifier.cached == 0


async def test_remembered_tokens_are_bounded_least_recently_used_first(
    decodes: list[str],
) -> None:
    keys = KeySet()
    verifier = JwtVerifier(
        keys.fetch, issuer="iss", audience="aud", monotonic=FakeMonotonic(), cache_size=2
    )
    t1, t2, t3 = (keys.token(jti=f"j{n}") for n in range(3))
    for token in (t1, t2, t1, t3):  # t1 used again, so t2 is the one dropped for t3
        await verifier.verify(token)
    assert verifier.cached == 2
    assert decodes == [t1, t2, t3]
    await verifier.verify(t1)
    await verifier.verify(t2)
    assert decodes == [t1, t2, t3, t2]


async def test_cache_size_zero_checks_every_token_in_full(decodes: list[str]) -> None:
    keys = KeySet()
    verifier = JwtVerifier(
        keys.fetch, issuer="iss", audience="aud", monotonic=FakeMonotonic(), cache_size=0
    )
    token = keys.token()
    await verifier.verify(token)
    await verifier.verify(token)
    assert len(decodes) == 2
    assert verifier.cached == 0


async def test_mesh_tokens_for_api_key_calls_verify_and_carry_the_key_id() -> None:
    # ADR 0041: auth mints them for the edge's API-key calls, for "<aud>#mesh".
    keys = KeySet()
    verifier = verifier_for(keys)
    caller = await verifier.verify(keys.token(aud="aud#mesh", akid="key-1", amr=["api_key"]))
    assert (caller.user_id, caller.api_key_id) == ("user-1", "key-1")
    assert (await verifier.verify(keys.token())).api_key_id == ""
    for audience in ("other", "other#mesh", "aud#other"):
        with pytest.raises(errors.UnauthenticatedError):
            await verifier.verify(keys.token(aud=audience, jti=audience))
