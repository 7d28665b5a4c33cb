"""The hashing bound's defaults and per-client cap, without a server."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from leaky_tokens.auth.adapters.bounded_password_hasher import (
    BoundedPasswordHasher,
    HashingBusyError,
)
from leaky_tokens.auth.bootstrap import AuthSettings, current_client
from leaky_tokens.auth.domain.audit import client_address_var
from leaky_tokens.runtime.settings import SettingsError


class HeldHasher:
    """Verifications wait until released."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def hash(self, password: str) -> str:
        return password

    async def verify(self, password_hash: str | None, password: str) -> bool:
        await self.gate.wait()
        return password_hash == password

    def needs_rehash(self, password_hash: str) -> bool:
        return False


def test_the_default_queue_is_as_long_as_the_concurrency() -> None:
    # A queue of 16 behind 2 cores was 8 hashes of wait for a valid login; now at most ~1.
    assert AuthSettings(hash_concurrency=2).hash_bounds() == (2, 2)
    assert AuthSettings(hash_concurrency=3, hash_queue=0).hash_bounds() == (3, 0)
    assert AuthSettings().hash_per_client == 2


@pytest.mark.parametrize(
    "bad", [{"hash_queue": -2}, {"hash_per_client": -1}, {"register_per_address": 0}]
)
def test_nonsense_bounds_are_refused(bad: dict[str, int]) -> None:
    with pytest.raises(SettingsError):
        AuthSettings(**bad).throttle_policy()  # type: ignore[arg-type]


async def flood(bounded: BoundedPasswordHasher, clients: list[str]) -> list[asyncio.Task[bool]]:
    tasks = []
    for client in clients:
        context = contextvars.copy_context()
        context.run(client_address_var.set, client)
        tasks.append(asyncio.create_task(bounded.verify("x", "y"), context=context))
    await asyncio.sleep(0)  # every task reaches its admission
    await asyncio.sleep(0)
    return tasks


async def test_sixteen_addresses_get_two_slots_two_queue_places_and_refusals() -> None:
    inner = HeldHasher()
    bounded = BoundedPasswordHasher(
        inner, *AuthSettings(hash_concurrency=2).hash_bounds(), client=current_client
    )
    tasks = await flood(bounded, [f"203.0.113.{i}" for i in range(16)])
    assert (bounded.running, bounded.queued) == (2, 2)
    refused = [t for t in tasks if t.done()]
    assert len(refused) == 12
    assert all(isinstance(t.exception(), HashingBusyError) for t in refused)
    inner.gate.set()
    await asyncio.gather(*(t for t in tasks if t not in refused))


async def test_an_ipv6_64_is_one_client_for_the_cap() -> None:
    inner = HeldHasher()
    bounded = BoundedPasswordHasher(inner, 8, 8, per_client=2, client=current_client)
    tasks = await flood(bounded, ["2001:db8::1", "2001:db8::2", "2001:db8::3", "192.0.2.1"])
    assert [t.done() for t in tasks] == [False, False, True, False]
    assert bounded.admitted_for("a:2001:db8::/64") == 2
    inner.gate.set()
    await asyncio.gather(*(t for t in tasks if not t.done()))
    assert bounded.admitted == 0
    assert bounded.admitted_for("a:2001:db8::/64") == 0
