"""Membership from the auth service (ListMyOrganizations as the caller), cached briefly.

Shared by the services that check org membership now rather than trust the JWT's org list
(ADR 0023): the token service and the analytics service.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from leaky.auth.v1 import auth_pb2, auth_pb2_grpc
from leaky_tokens.runtime.errors import UnauthenticatedError, UnavailableError

PAGE = 200  # the most ListMyOrganizations returns per page
MAX_PAGES = 50  # 10,000 organizations: far past any real user; bounds a looping token
MAX_USERS = 10_000  # users whose answers are remembered


class GrpcMembership:
    """The Membership port over AuthService.ListMyOrganizations with the caller's token.

    Answers are cached per user for `cache_seconds` (the service's membership_cache_seconds):
    a member removed from an organization is refused at most that long after the removal.
    At most `max_users` answers are kept, the oldest dropped first.
    """

    def __init__(
        self,
        target: str,
        cache_seconds: float,
        *,
        timeout_seconds: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
        max_users: int = MAX_USERS,
    ) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = auth_pb2_grpc.AuthServiceStub(self._channel)
        self._ttl, self._timeout, self._now = cache_seconds, timeout_seconds, monotonic
        self._max_users = max_users
        # In fetch order (a refetch moves a user to the end): the first entry is the oldest.
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}

    async def close(self) -> None:
        """Close the channel to the auth service."""
        await self._channel.close(None)

    async def org_ids(self, user_id: str, credential: str) -> frozenset[str]:
        now = self._now()
        hit = self._cache.get(user_id)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        found = await self._fetch(credential)
        self._cache.pop(user_id, None)
        self._cache[user_id] = (now, found)
        # Dropping the oldest keeps a miss O(1): rebuilding the dict without the stale
        # answers cost a full pass on every miss once every answer was still fresh.
        while len(self._cache) > self._max_users:
            del self._cache[next(iter(self._cache))]
        return found

    async def _fetch(self, credential: str) -> frozenset[str]:
        metadata = (("authorization", "Bearer " + credential),)
        ids: set[str] = set()
        token = ""
        for _ in range(MAX_PAGES):
            request = auth_pb2.ListMyOrganizationsRequest(page_size=PAGE, page_token=token)
            try:
                page = await self._stub.ListMyOrganizations(
                    request, timeout=self._timeout, metadata=metadata
                )
            except grpc.aio.AioRpcError as error:
                if error.code() is grpc.StatusCode.UNAUTHENTICATED:
                    raise UnauthenticatedError(
                        "the auth service refused the credential", reason="INVALID_TOKEN"
                    ) from error
                raise UnavailableError(
                    f"cannot check organization membership: {error.code().name}",
                    reason="MEMBERSHIP_UNAVAILABLE",
                ) from error
            ids.update(org.id for org in page.organizations)
            token = page.next_page_token
            if not token:
                break
        return frozenset(ids)


class InMemoryMembership:
    """The Membership port over a dict (tests, and a mesh without an auth service)."""

    def __init__(self, members: dict[str, set[str]] | None = None) -> None:
        self.members = members if members is not None else {}
        self.calls = 0

    async def org_ids(self, user_id: str, credential: str) -> frozenset[str]:
        self.calls += 1
        return frozenset(self.members.get(user_id, ()))
