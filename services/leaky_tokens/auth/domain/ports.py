"""Interfaces the auth domain needs besides the shared Clock and Randomness."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from leaky_tokens.auth.domain.model import ApiKey, Membership, Organization, SigningKey, User
from leaky_tokens.auth.domain.throttle import Attempts


class DuplicateError(Exception):
    """A unique constraint was violated; `field` names the clashing value."""

    def __init__(self, field: str) -> None:
        super().__init__(f"duplicate {field}")
        self.field = field


class LimitReachedError(Exception):
    """An insert would take an owner past a per-user cap; nothing was written."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"limit of {limit} reached")
        self.limit = limit


class UserStore(Protocol):
    """Users and their roles."""

    async def add_user(self, user: User, roles: Sequence[str]) -> None:
        """Insert a user with roles; DuplicateError('username'|'email') on a clash."""

    async def get_user(self, user_id: str) -> User | None:
        """The user with roles, or None."""

    async def get_user_by_username(self, username: str) -> User | None:
        """Case-insensitive lookup, with roles."""

    async def grant_role(self, user_id: str, role: str) -> None:
        """Give a user a role (idempotent, safe under concurrency)."""

    async def revoke_role(self, user_id: str, role: str) -> bool:
        """Take a role from a user; False if they did not have it."""

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        """Replace a user's password hash (after a rehash with new parameters)."""


class ApiKeyStore(Protocol):
    """API key records (hashes only)."""

    async def add_api_key(self, key: ApiKey, max_active: int | None = None) -> None:
        """Insert an API key record; LimitReachedError if the user would then have more than
        `max_active` active keys (unrevoked, unexpired at key.created_at). The count and the
        insert are one transaction, serialised per user, so racing calls cannot overshoot."""

    async def list_api_keys(
        self, user_id: str, *, limit: int | None = None, after: tuple[datetime, str] | None = None
    ) -> list[ApiKey]:
        """A user's unrevoked keys, newest first (ties by id); at most `limit`, starting
        after the key at (created_at, id) `after`."""

    async def get_api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key whose secret hashes to `key_hash`, revoked or not."""

    async def revoke_api_key(self, user_id: str, key_id: str, at: datetime) -> bool:
        """Mark the user's key revoked; False if there is no such unrevoked key."""


class OrgStore(Protocol):
    """Organizations and their memberships."""

    async def add_org(
        self, org: Organization, owner: Membership, max_owned: int | None = None
    ) -> None:
        """Insert an organization and its owner; DuplicateError('name') if the name clashes
        case-insensitively (model.name_key); LimitReachedError if the owner would then own
        more than `max_owned` (counted and inserted in one transaction, serialised per user)."""

    async def get_org(self, org_id: str) -> Organization | None:
        """The organization, or None."""

    async def list_orgs_for_user(
        self, user_id: str, *, limit: int | None = None, after: str | None = None
    ) -> list[Organization]:
        """Organizations the user belongs to, by name_key (code point order); at most
        `limit`, starting after the name key `after`."""

    async def add_member(self, membership: Membership) -> None:
        """Insert a membership; DuplicateError('member') if it exists."""

    async def remove_member(self, org_id: str, user_id: str) -> bool:
        """Delete a membership; False if there was none."""

    async def get_membership(self, org_id: str, user_id: str) -> Membership | None:
        """One membership, or None."""

    async def list_members(
        self, org_id: str, *, limit: int | None = None, after: str | None = None
    ) -> list[Membership]:
        """An organization's members with usernames, by name_key(username) (code point
        order); at most `limit`, starting after the username key `after`."""


class SigningKeyStore(Protocol):
    """JWT signing keys in rotation order."""

    async def add_signing_key(self, key: SigningKey) -> None:
        """Insert a signing key; the newest key is the current one."""

    async def list_signing_keys(self, limit: int) -> list[SigningKey]:
        """The newest `limit` signing keys, newest first."""


class AuthStore(UserStore, ApiKeyStore, OrgStore, SigningKeyStore, Protocol):
    """Everything AuthApp persists; one adapter (SQL or in-memory) implements all four parts."""


class PasswordHasher(Protocol):
    """Slow, salted password hashing, run off the event loop."""

    async def hash(self, password: str) -> str:
        """Hash a password."""

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True if the password matches; None or a foreign hash costs the same and is False."""

    def needs_rehash(self, password_hash: str) -> bool:
        """True if the hash was made with other parameters than the current ones."""


class TokenCrypto(Protocol):
    """Signing-key generation, JWT signing and JWK export."""

    async def generate_key(self, kid: str, now: datetime) -> SigningKey:
        """A fresh signing key (generated off the event loop)."""

    def sign(self, claims: dict[str, Any], key: SigningKey) -> str:
        """A signed JWT with header kid = key.kid."""

    def public_jwk(self, key: SigningKey) -> dict[str, str]:
        """The key's public half as a JWK dict (kty, kid, use, alg, ...); raises if the
        stored key cannot be loaded (e.g. a wrong passphrase)."""


class ThrottleStore(Protocol):
    """Failed-login counters by throttle key (a hashed username or a client address)."""

    async def update(
        self, key: str, change: Callable[[Attempts | None], Attempts | None]
    ) -> Attempts | None:
        """Atomically replace the key's state with change(state) (None deletes); the result."""
