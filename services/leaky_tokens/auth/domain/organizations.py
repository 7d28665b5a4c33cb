"""Organization use cases: create, list, membership; part of AuthApp."""

from __future__ import annotations

from typing import TYPE_CHECKING

from leaky_tokens.auth.domain import paging, rules
from leaky_tokens.auth.domain.model import MEMBER, OWNER, Membership, Organization, name_key
from leaky_tokens.auth.domain.paging import Page
from leaky_tokens.auth.domain.ports import AuthStore, DuplicateError, LimitReachedError
from leaky_tokens.runtime.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    NotFoundError,
    PermissionDeniedError,
    Validator,
)
from leaky_tokens.runtime.identity import Caller, refuse_api_key
from leaky_tokens.runtime.ports import Clock, Randomness

if TYPE_CHECKING:
    from leaky_tokens.auth.domain.service import AuthPolicy


class OrganizationCases:
    """Organizations and memberships; AuthApp inherits these and provides the ports.

    A separate module only to keep each file readable: the attributes below are AuthApp's.
    """

    _store: AuthStore
    _clock: Clock
    _random: Randomness
    _policy: AuthPolicy

    async def create_org(self, caller: Caller, name: str) -> Organization:
        """Create an organization owned by the caller."""
        refuse_api_key(caller, "create organizations")
        v = Validator()
        name = rules.check_org_name(v, name)
        v.raise_if_any()
        now = self._clock.now()
        org = Organization(
            id=self._random.new_id(), name=name, owner_id=caller.user_id, created_at=now
        )
        limit = self._policy.max_owned_orgs_per_user
        try:
            await self._store.add_org(
                org, Membership(org.id, caller.user_id, OWNER, now), max_owned=limit
            )
        except DuplicateError:
            raise AlreadyExistsError(
                "organization name already exists", reason="ORG_NAME_TAKEN"
            ) from None
        except LimitReachedError:
            raise FailedPreconditionError(
                f"a user may own at most {limit} organizations",
                reason="OWNED_ORG_LIMIT",
                metadata={"limit": str(limit)},
            ) from None
        return org

    async def list_my_orgs(
        self, caller: Caller, page_size: int = 0, page_token: str = ""
    ) -> Page[Organization]:
        """A page of the caller's organizations, by name (case-insensitively)."""
        v = Validator()
        size = paging.check_page_size(v, page_size)
        position = paging.check_token(v, "orgs", page_token, 1)
        v.raise_if_any()
        orgs = await self._store.list_orgs_for_user(
            caller.user_id, limit=size + 1, after=position[0] if position else None
        )
        return paging.page_of(orgs, size, "orgs", lambda o: [name_key(o.name)])

    async def _org(self, org_id: str) -> Organization:
        v = Validator()
        org_id = rules.check_uuid(v, "org_id", org_id)
        v.raise_if_any()
        org = await self._store.get_org(org_id)
        if org is None:
            raise NotFoundError("organization not found", reason="ORG_NOT_FOUND")
        return org

    async def _require_manager(self, caller: Caller, org: Organization) -> None:
        if caller.is_admin:
            return
        membership = await self._store.get_membership(org.id, caller.user_id)
        if membership is None or membership.role != OWNER:
            raise PermissionDeniedError(
                "only the organization's owner or an ADMIN may manage members",
                reason="NOT_ORG_OWNER",
            )

    async def add_member(self, caller: Caller, org_id: str, user_id: str) -> Membership:
        """Owner or ADMIN: add an existing user to an organization."""
        refuse_api_key(caller, "add organization members")
        org = await self._org(org_id)
        v = Validator()
        user_id = rules.check_uuid(v, "user_id", user_id)
        v.raise_if_any()
        await self._require_manager(caller, org)
        user = await self._store.get_user(user_id)
        if user is None:
            raise NotFoundError("user not found", reason="USER_NOT_FOUND")
        membership = Membership(org.id, user.id, MEMBER, self._clock.now(), user.username)
        try:
            await self._store.add_member(membership)
        except DuplicateError:
            raise AlreadyExistsError("user is already a member", reason="ALREADY_MEMBER") from None
        return membership

    async def remove_member(self, caller: Caller, org_id: str, user_id: str) -> None:
        """Owner or ADMIN removes a member; any member may remove themselves (leave)."""
        refuse_api_key(caller, "remove organization members")
        org = await self._org(org_id)
        v = Validator()
        user_id = rules.check_uuid(v, "user_id", user_id)
        v.raise_if_any()
        if user_id != caller.user_id:
            await self._require_manager(caller, org)
        if user_id == org.owner_id:
            raise FailedPreconditionError(
                "the owner cannot be removed from their organization", reason="OWNER_REMOVAL"
            )
        if not await self._store.remove_member(org.id, user_id):
            raise NotFoundError("membership not found", reason="MEMBERSHIP_NOT_FOUND")

    async def list_members(
        self, caller: Caller, org_id: str, page_size: int = 0, page_token: str = ""
    ) -> Page[Membership]:
        """A page of an organization's members, by username; visible to members and ADMIN."""
        org = await self._org(org_id)
        v = Validator()
        size = paging.check_page_size(v, page_size)
        position = paging.check_token(v, "members", page_token, 1)
        v.raise_if_any()
        if not caller.is_admin and await self._store.get_membership(org.id, caller.user_id) is None:
            raise PermissionDeniedError(
                "only members may list an organization's members", reason="NOT_ORG_MEMBER"
            )
        members = await self._store.list_members(
            org.id, limit=size + 1, after=position[0] if position else None
        )
        return paging.page_of(members, size, "members", lambda m: [name_key(m.username)])
