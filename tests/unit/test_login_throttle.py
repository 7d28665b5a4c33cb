"""Login throttling policy on a fake clock: waits double, then lockout; success resets."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from leaky_tokens.auth.adapters.in_memory_throttle_store import InMemoryThrottleStore
from leaky_tokens.auth.domain.throttle import (
    Admission,
    LoginThrottle,
    LoginThrottledError,
    ThrottlePolicy,
    ThrottleRule,
    address_key,
)
from tests.support.fakes import FakeClock

RULE = ThrottleRule(
    free_failures=3,
    base_delay=timedelta(seconds=1),
    max_delay=timedelta(seconds=8),
    lockout_after=8,
    lockout=timedelta(minutes=15),
)
LOOSE = ThrottleRule(free_failures=100, lockout_after=1000)  # addresses out of the way


def throttle(clock: FakeClock, address: ThrottleRule = LOOSE) -> LoginThrottle:
    return LoginThrottle(InMemoryThrottleStore(), clock, ThrottlePolicy(RULE, address))


async def fail(t: LoginThrottle, name: str = "alice", address: str = "") -> Admission:
    """One admitted attempt that turned out wrong (the charge made at admission stands)."""
    return await t.admit(name, address)


async def refused_for(t: LoginThrottle, name: str = "alice", address: str = "") -> float:
    with pytest.raises(LoginThrottledError) as info:
        await t.admit(name, address)
    assert info.value.reason == "LOGIN_THROTTLED"
    return info.value.retry_after_seconds


def test_waits_are_free_then_double_up_to_the_cap_then_lock_out() -> None:
    assert [RULE.wait_after(n).total_seconds() for n in range(1, 10)] == [
        0,
        0,
        1,
        2,
        4,
        8,
        8,
        900,
        900,
    ]


async def test_free_failures_are_admitted_at_once_and_charged_to_both_keys() -> None:
    t = throttle(FakeClock(), address=RULE)
    admissions = [await fail(t, address="192.0.2.1") for _ in range(RULE.free_failures)]
    assert [[kind for kind, _ in a.keys] for a in admissions] == [["username", "address"]] * 3
    assert await refused_for(t, address="192.0.2.1") == 1


async def test_each_failure_past_the_free_ones_doubles_the_required_wait() -> None:
    clock = FakeClock()
    t = throttle(clock)
    for _ in range(RULE.free_failures):
        await fail(t)
    waits = []
    for _ in range(4):
        wait = await refused_for(t)
        waits.append(wait)
        clock.advance(seconds=wait)
        await fail(t)
    assert waits == [1, 2, 4, 8]


async def test_a_refused_attempt_does_not_extend_the_wait() -> None:
    clock = FakeClock()
    t = throttle(clock)
    for _ in range(RULE.free_failures):
        await fail(t)
    for _ in range(5):
        assert await refused_for(t) == 1
    clock.advance(seconds=1)
    await fail(t)


async def test_the_lockout_failure_locks_the_username_for_the_lockout_time() -> None:
    clock = FakeClock()
    t = throttle(clock)
    locked: tuple[str, ...] = ()
    for _ in range(RULE.lockout_after):
        clock.advance(seconds=60)  # always past the doubling wait
        locked = (await fail(t)).locked
    assert locked == ("username",)
    assert await refused_for(t) == 900
    clock.advance(minutes=14, seconds=59)
    assert await refused_for(t) == 1
    clock.advance(seconds=1)
    await fail(t)  # the lockout is temporary


async def test_success_resets_the_username_counter() -> None:
    clock = FakeClock()
    t = throttle(clock)
    for _ in range(RULE.free_failures):
        await fail(t)
    clock.advance(seconds=1)
    await t.succeeded(await t.admit("alice", ""))
    for _ in range(RULE.free_failures):
        await fail(t)  # a fresh allowance of free failures
    await refused_for(t)


async def test_usernames_are_throttled_case_insensitively_and_apart() -> None:
    t = throttle(FakeClock())
    for name in ("alice", "ALICE", " Alice"):
        await fail(t, name)
    await refused_for(t, "aLiCe")
    await fail(t, "bob")  # another user is not affected


async def test_unknown_and_known_usernames_are_throttled_alike() -> None:
    # The throttle never learns whether a name exists: the same failures give the same answer.
    answers = []
    for name in ("alice", "no-such-user"):
        clock = FakeClock()
        t = throttle(clock)
        for _ in range(RULE.free_failures):
            await fail(t, name)
        answers.append(await refused_for(t, name))
    assert answers[0] == answers[1] == 1


async def test_an_address_is_throttled_across_usernames_and_success_refunds_it() -> None:
    clock = FakeClock()
    t = throttle(clock, address=RULE)
    for i in range(RULE.free_failures):
        await fail(t, f"user{i}", "203.0.113.7")
    await refused_for(t, "someone-else", "203.0.113.7")
    await fail(t, "someone-else", "203.0.113.8")  # another address is not affected
    clock.advance(seconds=1)
    await t.succeeded(await t.admit("good", "203.0.113.7"))
    await refused_for(t, "other", "203.0.113.7")  # success only refunded its own charge


async def test_an_ipv6_slash_64_counts_as_one_address() -> None:
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.1") == address_key("192.0.2.1")


async def test_parallel_guesses_are_all_counted() -> None:
    t = throttle(FakeClock())
    results = await asyncio.gather(
        *(t.admit("alice", "") for _ in range(10)), return_exceptions=True
    )
    admitted = [r for r in results if isinstance(r, Admission)]
    assert len(admitted) == RULE.free_failures
    assert all(isinstance(r, LoginThrottledError) for r in results if r not in admitted)


async def test_a_cancelled_attempt_is_refunded() -> None:
    t = throttle(FakeClock())
    for _ in range(RULE.free_failures - 1):
        await fail(t)
    await t.cancelled(await t.admit("alice", ""))
    await fail(t)
    await refused_for(t)


async def test_failures_are_forgotten_after_a_quiet_lockout_period() -> None:
    clock = FakeClock()
    t = throttle(clock)
    for _ in range(RULE.free_failures):
        await fail(t)
    clock.advance(minutes=15)
    for _ in range(RULE.free_failures):
        await fail(t)


async def test_the_in_memory_store_stays_bounded() -> None:
    store = InMemoryThrottleStore(max_keys=3)
    t = LoginThrottle(store, FakeClock(), ThrottlePolicy(RULE, LOOSE))
    for i in range(10):
        await t.admit(f"user{i}", "")
    assert len(store) == 3
