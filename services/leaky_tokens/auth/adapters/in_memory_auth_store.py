"""AuthStore in process memory, with the SQL store's semantics (tests, throwaway runs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from leaky_tokens.auth.domain.model import (
    SEEDED_ROLES,
    ApiKey,
    Membership,
    Organization,
    SigningKey,
    User,
    name_key,
)
from leaky_tokens.auth.domain.ports import DuplicateError, LimitReachedError


class InMemoryAuthStore:
    """Every AuthStore part on dicts.

    No method awaits between its checks and its writes, so each one is atomic on the event
    loop, as a transaction is in the SQL store. References the SQL schema enforces with foreign
    keys (a key's user, a member's org) raise LookupError here.
    """

    def __init__(self) -> None:
        self._users: dict[str, User] = {}
        self._roles: dict[str, set[str]] = {}
        self._keys: dict[str, ApiKey] = {}
        self._orgs: dict[str, Organization] = {}
        self._members: dict[tuple[str, str], Membership] = {}
        self._signing: list[SigningKey] = []

    async def close(self) -> None:
        """Nothing to release."""

    # -- users ----------------------------------------------------------------------------

    def _with_roles(self, user: User) -> User:
        return replace(user, roles=frozenset(self._roles.get(user.id, ())))

    def _require_user(self, user_id: str) -> None:
        if user_id not in self._users:
            raise LookupError(f"no user {user_id}")

    async def add_user(self, user: User, roles: Sequence[str]) -> None:
        if any(name_key(u.username) == name_key(user.username) for u in self._users.values()):
            raise DuplicateError("username")
        if any(u.email == user.email for u in self._users.values()):
            raise DuplicateError("email")
        if user.id in self._users:
            raise DuplicateError("id")
        unknown = set(roles) - set(SEEDED_ROLES)
        if unknown:
            raise LookupError(f"unknown roles {sorted(unknown)}")
        self._users[user.id] = replace(user, roles=frozenset())
        self._roles[user.id] = set(roles)

    async def get_user(self, user_id: str) -> User | None:
        user = self._users.get(user_id)
        return self._with_roles(user) if user else None

    async def get_user_by_username(self, username: str) -> User | None:
        key = name_key(username)
        for user in self._users.values():
            if name_key(user.username) == key:
                return self._with_roles(user)
        return None

    async def grant_role(self, user_id: str, role: str) -> None:
        self._require_user(user_id)
        if role not in SEEDED_ROLES:
            raise LookupError(f"unknown role {role}")
        self._roles[user_id].add(role)

    async def revoke_role(self, user_id: str, role: str) -> bool:
        held = self._roles.get(user_id, set())
        if role not in held:
            return False
        held.discard(role)
        return True

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        user = self._users.get(user_id)
        if user is not None:
            self._users[user_id] = replace(user, password_hash=password_hash)

    # -- API keys -------------------------------------------------------------------------

    async def add_api_key(self, key: ApiKey, max_active: int | None = None) -> None:
        self._require_user(key.user_id)
        if key.id in self._keys or any(k.key_hash == key.key_hash for k in self._keys.values()):
            raise DuplicateError("key")
        if max_active is not None:
            active = [
                k
                for k in self._keys.values()
                if k.user_id == key.user_id
                and k.revoked_at is None
                and not k.expired(key.created_at)
            ]
            if len(active) + 1 > max_active:
                raise LimitReachedError(max_active)
        self._keys[key.id] = key

    async def list_api_keys(
        self, user_id: str, *, limit: int | None = None, after: tuple[datetime, str] | None = None
    ) -> list[ApiKey]:
        mine = [k for k in self._keys.values() if k.user_id == user_id and k.revoked_at is None]
        mine.sort(key=lambda k: k.id)
        mine.sort(key=lambda k: k.created_at, reverse=True)  # stable: id ascending within ties
        if after is not None:
            at, key_id = after
            mine = [k for k in mine if k.created_at < at or (k.created_at == at and k.id > key_id)]
        return mine[:limit]

    async def get_api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        return next((k for k in self._keys.values() if k.key_hash == key_hash), None)

    async def revoke_api_key(self, user_id: str, key_id: str, at: datetime) -> bool:
        key = self._keys.get(key_id)
        if key is None or key.user_id != user_id or key.revoked_at is not None:
            return False
        self._keys[key_id] = replace(key, revoked_at=at)
        return True

    # -- organizations --------------------------------------------------------------------

    async def add_org(
        self, org: Organization, owner: Membership, max_owned: int | None = None
    ) -> None:
        self._require_user(org.owner_id)
        self._require_user(owner.user_id)
        if any(name_key(o.name) == name_key(org.name) for o in self._orgs.values()):
            raise DuplicateError("name")
        owned = sum(o.owner_id == org.owner_id for o in self._orgs.values())
        if max_owned is not None and owned + 1 > max_owned:
            raise LimitReachedError(max_owned)
        self._orgs[org.id] = org
        self._members[(org.id, owner.user_id)] = replace(owner, username="")

    async def get_org(self, org_id: str) -> Organization | None:
        return self._orgs.get(org_id)

    async def list_orgs_for_user(
        self, user_id: str, *, limit: int | None = None, after: str | None = None
    ) -> list[Organization]:
        orgs = [self._orgs[o] for (o, u) in self._members if u == user_id]
        orgs = [o for o in orgs if after is None or name_key(o.name) > after]
        return sorted(orgs, key=lambda o: name_key(o.name))[:limit]

    async def add_member(self, membership: Membership) -> None:
        if membership.org_id not in self._orgs:
            raise LookupError(f"no organization {membership.org_id}")
        self._require_user(membership.user_id)
        key = (membership.org_id, membership.user_id)
        if key in self._members:
            raise DuplicateError("member")
        self._members[key] = replace(membership, username="")

    async def remove_member(self, org_id: str, user_id: str) -> bool:
        return self._members.pop((org_id, user_id), None) is not None

    def _named(self, membership: Membership) -> Membership:
        return replace(membership, username=self._users[membership.user_id].username)

    async def get_membership(self, org_id: str, user_id: str) -> Membership | None:
        membership = self._members.get((org_id, user_id))
        return self._named(membership) if membership else None

    async def list_members(
        self, org_id: str, *, limit: int | None = None, after: str | None = None
    ) -> list[Membership]:
        members = [self._named(m) for (o, _), m in self._members.items() if o == org_id]
        members = [m for m in members if after is None or name_key(m.username) > after]
        return sorted(members, key=lambda m: name_key(m.username))[:limit]

    # -- signing keys ---------------------------------------------------------------------

    async def add_signing_key(self, key: SigningKey) -> None:
        if any(k.kid == key.kid for k in self._signing):
            raise DuplicateError("kid")
        self._signing.append(key)

    async def list_signing_keys(self, limit: int) -> list[SigningKey]:
        return list(reversed(self._signing))[:limit]
