"""Auth values: users, API keys, organizations, memberships and signing keys."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import datetime

USER = "USER"
ADMIN = "ADMIN"
SEEDED_ROLES = (USER, ADMIN)

OWNER = "OWNER"
MEMBER = "MEMBER"


def name_key(name: str) -> str:
    """The form in which usernames and organization names are unique and sorted: NFKC then
    case-folded (and NFKC again, as casefolding can denormalise), so "Acme", "ACME", "acme",
    fullwidth "Acme" (U+FF21...) and "Café" spelt with U+00E9 or with e + U+0301 are one name
    (every store compares and orders these keys; migration 0003 recomputed the stored ones)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


@dataclass(frozen=True)
class User:
    """A registered user; `password_hash` is an argon2id/bcrypt hash, never the password."""

    id: str
    username: str
    email: str
    password_hash: str
    created_at: datetime
    roles: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class ApiKey:
    """An API key's record: only the hash of the secret is kept."""

    id: str
    user_id: str
    name: str
    prefix: str
    key_hash: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def expired(self, now: datetime) -> bool:
        """True once the key's expiry has passed."""
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True)
class Organization:
    """A group of users sharing quotas."""

    id: str
    name: str
    owner_id: str
    created_at: datetime


@dataclass(frozen=True)
class Membership:
    """A user's membership of an organization, with the username for display."""

    org_id: str
    user_id: str
    role: str
    joined_at: datetime
    username: str = ""


@dataclass(frozen=True)
class SigningKey:
    """An RSA signing key; `private_pem` may be passphrase-encrypted by the crypto adapter."""

    kid: str
    private_pem: bytes
    created_at: datetime
    # When it starts signing tokens; until then it is only published in the JWKS (ADR 0049).
    active_from: datetime


@dataclass(frozen=True)
class Session:
    """The result of registering or logging in."""

    user: User
    token: str
    expires_at: datetime


@dataclass(frozen=True)
class IssuedApiKey:
    """A new API key and its secret, which is shown exactly once."""

    key: ApiKey
    secret: str


@dataclass(frozen=True)
class ApiKeyOwner:
    """Who a valid API key acts for."""

    key: ApiKey
    roles: frozenset[str]
    org_ids: frozenset[str]
