"""Auth use cases: registration, login, API keys, organizations and signing keys."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from leaky_tokens.auth.domain import paging, roles, rules
from leaky_tokens.auth.domain.audit import OPERATOR, AuditEvent, AuditTrail, LoggingAuditTrail
from leaky_tokens.auth.domain.model import (
    USER,
    ApiKey,
    ApiKeyOwner,
    IssuedApiKey,
    Session,
    SigningKey,
    User,
)
from leaky_tokens.auth.domain.organizations import OrganizationCases
from leaky_tokens.auth.domain.paging import Page
from leaky_tokens.auth.domain.ports import (
    AuthStore,
    DuplicateError,
    LimitReachedError,
    PasswordHasher,
    TokenCrypto,
)
from leaky_tokens.auth.domain.registration_throttle import (
    RegistrationThrottle,
    RegistrationThrottledError,
)
from leaky_tokens.auth.domain.throttle import USERNAME, LoginThrottle
from leaky_tokens.runtime.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    Validator,
)
from leaky_tokens.runtime.identity import API_KEY_AUTH, Caller, mesh_audience, refuse_api_key
from leaky_tokens.runtime.ports import Clock, Randomness

# Pending signing keys a JWKS read leaves room for (normally at most one: see _signing_keys).
PENDING_ROOM = 4
API_KEY_PREFIX = "lt_"
API_KEY_SECRET_BYTES = 32
API_KEY_SHOWN_CHARS = 11  # "lt_" + 8 characters: enough to recognise, useless to an attacker


@dataclass(frozen=True)
class AuthPolicy:
    """Tunable rules of the auth domain."""

    issuer: str = "leaky-tokens-auth"
    audience: str = "leaky-tokens"
    token_ttl: timedelta = timedelta(hours=1)
    published_keys: int = 2
    # A rotated key is published this long before it signs (ADR 0049); zero: current at once.
    signing_key_lead: timedelta = timedelta(seconds=15)
    max_api_keys_per_user: int = 100  # active (unrevoked, unexpired) keys
    max_owned_orgs_per_user: int = 20


def hash_api_key(secret: str) -> str:
    """SHA-256 hex of an API key: keys carry 256 random bits, so a fast hash is enough."""
    return hashlib.sha256(secret.encode()).hexdigest()


class AuthApp(OrganizationCases):
    """The auth service's use cases over its ports (organizations: OrganizationCases)."""

    def __init__(
        self,
        store: AuthStore,
        hasher: PasswordHasher,
        crypto: TokenCrypto,
        clock: Clock,
        randomness: Randomness,
        policy: AuthPolicy,
        *,
        throttle: LoginThrottle | None = None,
        registrations: RegistrationThrottle | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        self._throttle = throttle  # None: no login throttling (the bootstrap always wires one)
        self._registrations = registrations  # None: no registration budget (likewise)
        self._audit = audit or LoggingAuditTrail()
        self._store = store
        self._hasher = hasher
        self._crypto = crypto
        self._clock = clock
        self._random = randomness
        self._policy = policy

    # -- users and sessions ---------------------------------------------------------------

    async def register(
        self, username: str, email: str, password: str, client_address: str = ""
    ) -> Session:
        """Create a USER and sign them in; each `client_address` has a registration budget."""
        v = Validator()
        username = rules.check_username(v, username)
        email = rules.check_email(v, email)
        rules.check_password(v, password)
        v.raise_if_any()
        password_hash = await self._budgeted_hash(password, client_address)
        user = User(
            id=self._random.new_id(),
            username=username,
            email=email,
            password_hash=password_hash,
            created_at=self._clock.now(),
            roles=frozenset({USER}),
        )
        try:
            await self._store.add_user(user, [USER])
        except DuplicateError as dup:
            raise AlreadyExistsError(
                f"{dup.field} already exists", reason=f"{dup.field.upper()}_TAKEN"
            ) from None
        return await self._session(user)

    async def _budgeted_hash(self, password: str, client_address: str) -> str:
        # Charged before the hash, so a register flood is refused before it costs a hash.
        if self._registrations is None:
            return await self._hasher.hash(password)
        try:
            charge = await self._registrations.admit(client_address)
        except RegistrationThrottledError as refused:
            if refused.first:  # once per address and window: a flood cannot flood the log
                self._audit.record(AuditEvent("register.throttled", "failure", "", ""))
            raise
        try:
            return await self._hasher.hash(password)
        except Exception:
            await self._registrations.cancelled(charge)
            raise

    async def login(self, username: str, password: str, client_address: str = "") -> Session:
        """Check credentials; neither the answer nor the throttling says whether the username
        exists. Failed attempts are throttled per username and per `client_address`."""
        v = Validator()
        username = v.require("username", username)
        rules.check_login_password(v, password)
        v.raise_if_any()
        # A name that could never have registered is looked up by nobody, but still costs a
        # full hash verification: the answer and its timing say nothing about existence.
        valid_name = rules.LEGACY_USERNAME_RE.fullmatch(username) is not None
        # -- throttling (throttle.py): charged before the hash, judged after it
        admission = await self._throttle.admit(username, client_address) if self._throttle else None
        try:
            user = await self._store.get_user_by_username(username) if valid_name else None
            valid = await self._hasher.verify(user.password_hash if user else None, password)
        except Exception:
            if self._throttle and admission:
                await self._throttle.cancelled(admission)
            raise
        if user is None or not valid:
            self._audit_login_failure(username, user, admission.locked if admission else ())
            raise UnauthenticatedError("invalid credentials", reason="INVALID_CREDENTIALS")
        if self._throttle and admission:
            await self._throttle.succeeded(admission)
        # -- end throttling
        if self._hasher.needs_rehash(user.password_hash):
            await self._store.set_password_hash(user.id, await self._hasher.hash(password))
        if not user.roles:
            await self._store.grant_role(user.id, USER)
            user = replace(user, roles=frozenset({USER}))
        return await self._session(user)

    def _audit_login_failure(
        self, username: str, user: User | None, locked: tuple[str, ...]
    ) -> None:
        # The username as typed (capped), never the password; the user id when it exists.
        name = {"username": username[:64]}
        subject = user.id if user else ""
        self._audit.record(AuditEvent("login.failed", "failure", "", subject, name))
        for kind in locked:
            detail = {**name, "locked": kind} if kind == USERNAME else {"locked": kind}
            self._audit.record(AuditEvent("login.locked", "failure", "", subject, detail))

    async def grant_role(self, username: str, role: str) -> User:
        """Operator action (CLI): give a user a role, e.g. bootstrap the first ADMIN."""
        return await roles.grant_role(self._store, self._audit, username, role, OPERATOR)

    async def revoke_role(self, username: str, role: str) -> User:
        """Operator action (CLI): take a role from a user."""
        return await roles.revoke_role(self._store, self._audit, username, role, OPERATOR)

    async def _session(self, user: User) -> Session:
        now = self._clock.now()
        expires = now + self._policy.token_ttl
        orgs = await self._store.list_orgs_for_user(user.id)
        claims = {
            "iss": self._policy.issuer,
            "aud": self._policy.audience,
            "sub": user.id,
            "roles": sorted(user.roles),
            "orgs": sorted(o.id for o in orgs),
            "iat": int(now.timestamp()),
            "exp": int(expires.timestamp()),
            "jti": self._random.new_id(),
        }
        token = self._crypto.sign(claims, await self._current_key())
        return Session(user=user, token=token, expires_at=expires)

    # -- API keys -------------------------------------------------------------------------

    async def _owner(self, caller: Caller, user_id: str) -> str:
        v = Validator()
        user_id = rules.check_uuid(v, "user_id", user_id)
        v.raise_if_any()
        if caller.user_id != user_id and not caller.is_admin:
            raise PermissionDeniedError(
                "only ADMIN may manage another user's API keys", reason="NOT_KEY_OWNER"
            )
        return user_id

    async def create_api_key(
        self, caller: Caller, user_id: str, name: str, expires_at: datetime | None
    ) -> IssuedApiKey:
        """Issue a key for the caller (or, for ADMIN, anyone); the secret is returned once."""
        refuse_api_key(caller, "create API keys")
        user_id = await self._owner(caller, user_id)
        now = self._clock.now()
        v = Validator()
        name = rules.check_text(v, "name", name, rules.MAX_KEY_NAME, required=False)
        if expires_at is not None and expires_at <= now:
            v.fail("expires_at", "must be in the future")
        v.raise_if_any()
        if await self._store.get_user(user_id) is None:
            raise NotFoundError("user not found", reason="USER_NOT_FOUND")
        secret = API_KEY_PREFIX + self._random.secret(API_KEY_SECRET_BYTES)
        key = ApiKey(
            id=self._random.new_id(),
            user_id=user_id,
            name=name,
            prefix=secret[:API_KEY_SHOWN_CHARS],
            key_hash=hash_api_key(secret),
            created_at=now,
            expires_at=expires_at,
        )
        limit = self._policy.max_api_keys_per_user
        try:
            await self._store.add_api_key(key, max_active=limit)
        except LimitReachedError:
            raise FailedPreconditionError(
                f"a user may have at most {limit} active API keys; revoke one first",
                reason="API_KEY_LIMIT",
                metadata={"limit": str(limit)},
            ) from None
        self._audit.record(
            AuditEvent("api_key.created", "success", caller.user_id, user_id, {"key_id": key.id})
        )
        return IssuedApiKey(key=key, secret=secret)

    async def list_api_keys(
        self, caller: Caller, user_id: str, page_size: int = 0, page_token: str = ""
    ) -> Page[ApiKey]:
        """A page of a user's keys (expired included, revoked not), newest first, no secrets."""
        refuse_api_key(caller, "list API keys")
        user_id = await self._owner(caller, user_id)
        v = Validator()
        size = paging.check_page_size(v, page_size)
        position = paging.check_token(v, "api_keys", page_token, 2)
        after = None
        if position is not None:
            try:
                after = (datetime.fromisoformat(position[0]), position[1])
            except ValueError:
                after = None
            if after is None or after[0].tzinfo is None:
                v.fail("page_token", "is not a page token of this list")
        v.raise_if_any()
        keys = await self._store.list_api_keys(user_id, limit=size + 1, after=after)
        return paging.page_of(keys, size, "api_keys", lambda k: [k.created_at.isoformat(), k.id])

    async def revoke_api_key(self, caller: Caller, user_id: str, key_id: str) -> datetime:
        """Revoke one of a user's keys; NOT_FOUND if it is not theirs or already revoked."""
        refuse_api_key(caller, "revoke API keys")
        user_id = await self._owner(caller, user_id)
        v = Validator()
        key_id = rules.check_uuid(v, "api_key_id", key_id)
        v.raise_if_any()
        now = self._clock.now()
        if not await self._store.revoke_api_key(user_id, key_id, now):
            raise NotFoundError("api key not found", reason="API_KEY_NOT_FOUND")
        self._audit.record(
            AuditEvent("api_key.revoked", "success", caller.user_id, user_id, {"key_id": key_id})
        )
        return now

    async def validate_api_key(self, secret: str) -> ApiKeyOwner:
        """Resolve a key to its owner's current roles and organizations."""
        secret = secret.strip()
        if not secret:
            raise UnauthenticatedError("api key is required", reason="MISSING_API_KEY")
        digest = hash_api_key(secret)
        key = await self._store.get_api_key_by_hash(digest)
        if key is None or not hmac.compare_digest(key.key_hash, digest) or key.revoked_at:
            raise UnauthenticatedError("invalid api key", reason="INVALID_API_KEY")
        if key.expired(self._clock.now()):
            raise UnauthenticatedError("api key expired", reason="API_KEY_EXPIRED")
        user = await self._store.get_user(key.user_id)
        if user is None:
            raise UnauthenticatedError("invalid api key", reason="INVALID_API_KEY")
        orgs = await self._store.list_orgs_for_user(user.id)
        return ApiKeyOwner(key=key, roles=user.roles, org_ids=frozenset(o.id for o in orgs))

    async def mesh_token(self, owner: ApiKeyOwner, ttl: timedelta) -> tuple[str, datetime]:
        """A short-lived JWT for an API-key call, for the services behind the edge (ADR 0041).

        Signed with the current key like a login token, but for the mesh audience (the edge
        refuses it, so it is worthless outside), marked as an API-key call (`amr`) with the
        key's id (`akid`), and never valid past the key's own expiry.
        """
        now = self._clock.now()
        expires = now + ttl
        if owner.key.expires_at is not None:
            expires = min(expires, owner.key.expires_at)
        claims = {
            "iss": self._policy.issuer,
            "aud": mesh_audience(self._policy.audience),
            "sub": owner.key.user_id,
            "roles": sorted(owner.roles),
            "orgs": sorted(owner.org_ids),
            "iat": int(now.timestamp()),
            "exp": int(expires.timestamp()),
            "jti": self._random.new_id(),
            "amr": [API_KEY_AUTH],
            "akid": owner.key.id,
        }
        return self._crypto.sign(claims, await self._current_key()), expires

    # -- signing keys ---------------------------------------------------------------------

    async def ensure_signing_key(self) -> SigningKey:
        """The current signing key, creating the first one (current at once) if there is none."""
        _, active = await self._signing_keys()
        key = active[0] if active else await self._new_signing_key(self._clock.now())
        self._crypto.public_jwk(key)  # fail at start, not at first login, if it cannot load
        return key

    async def _signing_keys(self) -> tuple[list[SigningKey], list[SigningKey]]:
        """(pending, active), newest first: a pending key is published but does not sign yet;
        the first active key is the current one. A rotation refuses while a key is pending,
        but two at once (two replicas) can both pass that check: the window read leaves room
        for a few pending keys, so none of them pushes a live key out of the JWKS."""
        keys = await self._store.list_signing_keys(self._policy.published_keys + PENDING_ROOM)
        now = self._clock.now()
        return [k for k in keys if k.active_from > now], [k for k in keys if k.active_from <= now]

    async def _current_key(self) -> SigningKey:
        _, active = await self._signing_keys()
        if not active:
            raise FailedPreconditionError("no signing key", reason="NO_SIGNING_KEY")
        return active[0]

    async def _new_signing_key(self, active_from: datetime) -> SigningKey:
        key = await self._crypto.generate_key(self._random.new_id(), self._clock.now())
        key = replace(key, active_from=active_from)
        await self._store.add_signing_key(key)
        return key

    async def rotate_signing_key(self, caller: Caller) -> tuple[SigningKey, list[str]]:
        """ADMIN: a new signing key, published at once and current after the policy's lead, so
        every JWKS cache (the edge's, the services') holds it before a token carries its kid;
        the previous keys stay published so live tokens still verify."""
        refuse_api_key(caller, "rotate signing keys")
        if not caller.is_admin:
            raise PermissionDeniedError("ADMIN role required", reason="ADMIN_REQUIRED")
        pending, _ = await self._signing_keys()
        if pending:
            raise FailedPreconditionError(
                f"signing key {pending[0].kid} is already pending: it becomes current at "
                f"{pending[0].active_from.isoformat()}; rotate again after that",
                reason="SIGNING_KEY_PENDING",
            )
        key = await self._new_signing_key(self._clock.now() + self._policy.signing_key_lead)
        self._audit.record(
            AuditEvent(
                "signing_key.rotated",
                "success",
                caller.user_id,
                "",
                {"kid": key.kid, "active_from": key.active_from.isoformat()},
            )
        )
        return key, [k["kid"] for k in await self.jwks()]

    async def jwks(self) -> list[dict[str, str]]:
        """Public JWKs: a pending key first, then the current key and previous ones (the
        policy's published_keys of them)."""
        pending, active = await self._signing_keys()
        keys = pending + active[: self._policy.published_keys]
        return [self._crypto.public_jwk(k) for k in keys]
