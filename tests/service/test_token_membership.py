"""Org membership from auth's ListMyOrganizations, as the caller, cached for a bounded time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from leaky.auth.v1 import auth_pb2, auth_pb2_grpc
from leaky_tokens.runtime.errors import UnauthenticatedError, UnavailableError
from leaky_tokens.runtime.membership import GrpcMembership


class FakeAuth(auth_pb2_grpc.AuthServiceServicer):
    """ListMyOrganizations over a dict keyed by bearer token, in pages of two."""

    def __init__(self) -> None:
        self.orgs: dict[str, list[str]] = {}
        self.calls = 0

    async def ListMyOrganizations(
        self,
        request: auth_pb2.ListMyOrganizationsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> auth_pb2.ListMyOrganizationsResponse:
        self.calls += 1
        token = dict(context.invocation_metadata() or ()).get("authorization", "")
        if token not in self.orgs:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
        start = int(request.page_token or 0)
        ids = self.orgs[token][start : start + 2]
        more = start + 2 < len(self.orgs[token])
        return auth_pb2.ListMyOrganizationsResponse(
            organizations=[auth_pb2.Organization(id=i) for i in ids],
            next_page_token=str(start + 2) if more else "",
        )


class Ticks:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def auth() -> AsyncIterator[tuple[FakeAuth, str]]:
    fake = FakeAuth()  # type: ignore[abstract]  # only ListMyOrganizations is called
    server = grpc.aio.server()
    auth_pb2_grpc.add_AuthServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield fake, f"127.0.0.1:{port}"
    await server.stop(0)


async def test_every_page_is_read_and_a_removal_shows_after_the_cache_bound(
    auth: tuple[FakeAuth, str],
) -> None:
    fake, target = auth
    fake.orgs["Bearer t1"] = ["o1", "o2", "o3"]
    ticks = Ticks()
    members = GrpcMembership(target, 5.0, monotonic=ticks)
    try:
        assert await members.org_ids("u1", "t1") == {"o1", "o2", "o3"}
        assert fake.calls == 2  # two pages
        fake.orgs["Bearer t1"] = ["o1"]  # removed from o2 and o3
        ticks.now = 4.9
        assert await members.org_ids("u1", "t1") == {"o1", "o2", "o3"}  # cached, within bound
        ticks.now = 5.0
        assert await members.org_ids("u1", "t1") == {"o1"}
    finally:
        await members.close()


async def test_a_refused_credential_and_an_unreachable_auth_are_told_apart(
    auth: tuple[FakeAuth, str],
) -> None:
    _, target = auth
    members = GrpcMembership(target, 5.0)
    try:
        with pytest.raises(UnauthenticatedError):
            await members.org_ids("u1", "unknown")
    finally:
        await members.close()
    nowhere = GrpcMembership("127.0.0.1:1", 5.0, timeout_seconds=0.5)
    try:
        with pytest.raises(UnavailableError) as info:
            await nowhere.org_ids("u1", "t1")
        assert info.value.reason == "MEMBERSHIP_UNAVAILABLE"
    finally:
        await nowhere.close()


async def test_answers_are_reused_and_bounded_oldest_first(auth: tuple[FakeAuth, str]) -> None:
    fake, target = auth
    for n in range(3):
        fake.orgs[f"Bearer t{n}"] = [f"o{n}"]
    members = GrpcMembership(target, 60.0, monotonic=Ticks(), max_users=2)
    try:
        for n in (0, 1, 0):
            assert await members.org_ids(f"u{n}", f"t{n}") == {f"o{n}"}
        assert fake.calls == 2  # u0's second answer came from the cache
        await members.org_ids("u2", "t2")  # a third user: u0, fetched first, is dropped
        await members.org_ids("u1", "t1")
        assert fake.calls == 3
        await members.org_ids("u0", "t0")
        assert fake.calls == 4
    finally:
        await members.close()
