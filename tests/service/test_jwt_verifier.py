"""JwtVerifier: signature and claims, and the key-set cache policy, on a fake monotonic clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

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
