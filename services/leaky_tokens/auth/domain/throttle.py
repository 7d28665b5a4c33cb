"""Failed-login throttling per username and per client address: doubling waits, then lockout."""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from leaky_tokens.runtime.errors import ResourceExhaustedError

if TYPE_CHECKING:
    from leaky_tokens.auth.domain.ports import ThrottleStore
    from leaky_tokens.runtime.ports import Clock

USERNAME = "username"
ADDRESS = "address"


@dataclass(frozen=True)
class ThrottleRule:
    """How failures on one key (a username or an address) are answered.

    The first `free_failures` failures cost nothing; each further one makes the next attempt
    wait `base_delay`, doubling up to `max_delay`; the `lockout_after`-th failure locks the key
    for `lockout`. A key with no failure for `lockout` is forgotten.
    """

    free_failures: int = 5
    base_delay: timedelta = timedelta(seconds=1)
    max_delay: timedelta = timedelta(seconds=60)
    lockout_after: int = 10
    lockout: timedelta = timedelta(minutes=15)

    def wait_after(self, failures: int) -> timedelta:
        """The wait imposed once a key has `failures` failures."""
        if failures >= self.lockout_after:
            return self.lockout
        if failures < self.free_failures:
            return timedelta(0)
        doublings = min(failures - self.free_failures, 30)  # 2**30 s is past any sane cap
        delay: timedelta = self.base_delay * (2**doublings)
        return min(delay, self.max_delay)


@dataclass(frozen=True)
class ThrottlePolicy:
    """The rules for usernames and for client addresses (looser: NAT puts many users on one)."""

    username: ThrottleRule = ThrottleRule()
    address: ThrottleRule = ThrottleRule(free_failures=20, lockout_after=100)


@dataclass(frozen=True)
class Attempts:
    """What a throttle key has done: counted failures, the last one, and the next allowed try."""

    failures: int
    last_failure: datetime
    allowed_at: datetime


class LoginThrottledError(ResourceExhaustedError):
    """Too many failed logins for this username or address: retry after the given delay."""

    def __init__(self, retry_after: timedelta) -> None:
        seconds = max(1, math.ceil(retry_after.total_seconds()))
        super().__init__(
            f"too many failed logins; retry in {seconds} s",
            retry_after_seconds=seconds,
            reason="LOGIN_THROTTLED",
        )


@dataclass(frozen=True)
class Admission:
    """An admitted attempt, charged in advance as a failure; `locked` names keys it locked."""

    keys: tuple[tuple[str, str], ...]  # (kind, key)
    locked: tuple[str, ...]


def username_key(username: str) -> str:
    """Case-insensitive, fixed-size key: the store never holds (possibly mistyped) names."""
    return "u:" + hashlib.sha256(username.strip().lower().encode()).hexdigest()


def address_key(address: str) -> str:
    """One key per IPv4 address and per IPv6 /64 (one host usually owns a whole /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "a:" + hashlib.sha256(address.encode()).hexdigest()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return "a:" + str(ipaddress.IPv6Network((ip, 64), strict=False))
    return "a:" + str(ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else ip)


def charge(state: Attempts | None, now: datetime, rule: ThrottleRule) -> Attempts | None:
    """The state after one more failure, or the same state if the key must still wait."""
    if state is not None and now - state.last_failure >= rule.lockout:
        state = None  # forgotten: no failure for a whole lockout period
    if state is not None and now < state.allowed_at:
        return state
    failures = (state.failures if state else 0) + 1
    return Attempts(failures, now, now + rule.wait_after(failures))


def refund(state: Attempts | None, rule: ThrottleRule) -> Attempts | None:
    """Undo one advance charge (the attempt turned out not to be a failure)."""
    if state is None or state.failures <= 1:
        return None
    failures = state.failures - 1
    return replace(
        state, failures=failures, allowed_at=state.last_failure + rule.wait_after(failures)
    )


class LoginThrottle:
    """Admits or refuses login attempts; state lives behind the ThrottleStore port.

    An attempt is charged as a failure before the password is checked, so a burst of parallel
    guesses is counted in full; success resets the username and refunds the address.
    """

    def __init__(self, store: ThrottleStore, clock: Clock, policy: ThrottlePolicy) -> None:
        self._store = store
        self._clock = clock
        self._policy = policy

    def _rule(self, kind: str) -> ThrottleRule:
        return self._policy.username if kind == USERNAME else self._policy.address

    async def admit(self, username: str, address: str) -> Admission:
        """Charge the attempt to both keys, or raise LoginThrottledError (charging nothing)."""
        now = self._clock.now()
        keys = [(USERNAME, username_key(username))]
        if address:
            keys.append((ADDRESS, address_key(address)))
        charged: list[tuple[str, str]] = []
        locked: list[str] = []
        for kind, key in keys:
            rule = self._rule(kind)
            waits: list[timedelta] = []

            def change(
                state: Attempts | None, rule: ThrottleRule = rule, waits: list[timedelta] = waits
            ) -> Attempts | None:
                # Decided inside the store's atomic update, so parallel guesses all count.
                after = charge(state, now, rule)
                if after is state and after is not None:
                    waits.append(after.allowed_at - now)
                return after

            state = await self._store.update(key, change)
            if waits:
                await self.cancelled(Admission(tuple(charged), ()))
                raise LoginThrottledError(waits[0])
            charged.append((kind, key))
            if state is not None and state.failures == rule.lockout_after:
                locked.append(kind)
        return Admission(tuple(charged), tuple(locked))

    async def succeeded(self, admission: Admission) -> None:
        """A correct password: forget the username's failures, refund the address's charge."""
        for kind, key in admission.keys:
            await self._store.update(key, _forget if kind == USERNAME else self._refund(kind))

    async def cancelled(self, admission: Admission) -> None:
        """The attempt was never judged (e.g. the server was too busy): refund both charges."""
        for kind, key in admission.keys:
            await self._store.update(key, self._refund(kind))

    def _refund(self, kind: str) -> Callable[[Attempts | None], Attempts | None]:
        rule = self._rule(kind)
        return lambda state: refund(state, rule)


def _forget(state: Attempts | None) -> None:
    return None
