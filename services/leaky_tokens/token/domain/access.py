"""Who a token request acts for and whether its input is acceptable: rules, no I/O."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from leaky_tokens.runtime.errors import PermissionDeniedError, Validator
from leaky_tokens.runtime.identity import Caller
from leaky_tokens.token.domain.policy import Policy, UnknownProviderError
from leaky_tokens.token.domain.ports import Subject
from leaky_tokens.token.domain.units import SAFE_LIMIT

MAX_IDEMPOTENCY_KEY = 100  # characters (the contract)
MAX_ID = 128  # user, org and reservation ids are UUIDs; this bounds anything else
MAX_REASON = 200  # characters of a grant's reason (it travels in the grant's event)


@dataclass(frozen=True, slots=True)
class Limits:
    """Input bounds from settings."""

    max_request_tokens: int = 10_000_000


def acting_user(caller: Caller, user_id: str) -> str:
    """The user a request acts for: the caller, or anyone when the caller is ADMIN."""
    if user_id != caller.user_id and not caller.is_admin:
        raise PermissionDeniedError(
            "only ADMIN may act for another user", reason="NOT_YOUR_USER_ID"
        )
    return user_id


def acting_roles(caller: Caller, user_id: str) -> frozenset[str]:
    """The roles that choose the tier: the caller's own, none for a user ADMIN acts for.

    Roles live in the user's own JWT; the token service cannot see another user's, so a
    request ADMIN makes for someone else is charged at the policy's default tier.
    """
    return caller.roles if user_id == caller.user_id else frozenset()


def check_subject(
    check: Validator, policy: Policy, user_id: str, provider: str, org_id: str
) -> None:
    """Record violations of the user id, org id and provider (JSON field names)."""
    if check.require("userId", user_id) and len(user_id) > MAX_ID:
        check.fail("userId", f"must be at most {MAX_ID} characters")
    if len(org_id) > MAX_ID:
        check.fail("orgId", f"must be at most {MAX_ID} characters")
    # The stores key levels by these ids (the Redis layout separates fields with \x1e/\x1f):
    # an id with a control character is bad input, never a store error (found by schemathesis
    # as ADMIN, whom no membership check stops first).
    for name, value in (("userId", user_id), ("orgId", org_id)):
        if _has_control(value):
            check.fail(name, "must not contain control characters")
    if check.require("provider", provider) and provider not in policy.providers:
        check.violations.extend(UnknownProviderError(provider, policy.providers).violations)


def check_tokens(check: Validator, name: str, tokens: int, limits: Limits, minimum: int) -> None:
    """Record a violation unless `minimum <= tokens <= max_request_tokens`."""
    top = min(limits.max_request_tokens, SAFE_LIMIT - 1)
    if not minimum <= tokens <= top:
        check.fail(name, f"must be between {minimum} and {top}, not {tokens}")


def check_key(check: Validator, key: str) -> str | None:
    """The idempotency key (None when empty), recording a violation when too long."""
    if len(key) > MAX_IDEMPOTENCY_KEY:
        check.fail("idempotencyKey", f"must be at most {MAX_IDEMPOTENCY_KEY} characters")
    if _has_control(key):
        check.fail("idempotencyKey", "must not contain control characters")
    return key or None


def check_reason(check: Validator, reason: str) -> None:
    """Record a violation unless a grant's reason is given, short and printable."""
    if not check.require("reason", reason):
        return
    if len(reason) > MAX_REASON:
        check.fail("reason", f"must be at most {MAX_REASON} characters")
    if _has_control(reason):
        check.fail("reason", "must not contain control characters")


def _has_control(text: str) -> bool:
    # The store packs fields with \x1e/\x1f; no control character belongs in these texts.
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


# A reservation id names its subject, so Settle and Release (which carry only the id) find
# the reservation's tenant in the store; the store still checks the subject it recorded, so
# an edited id finds nothing, and the caller must be the subject's user or ADMIN.
def reservation_id(uid: str, subject: Subject) -> str:
    """An opaque reservation id: a fresh UUID and the subject, base64url."""
    fields = [uid, subject.user_id, subject.provider, subject.org_id or ""]
    packed = base64.urlsafe_b64encode(json.dumps(fields, separators=(",", ":")).encode())
    return "rsv_" + packed.decode().rstrip("=")


def reservation_subject(rid: str) -> Subject | None:
    """The subject named by a reservation id; None for an id this service did not make."""
    if not rid.startswith("rsv_") or len(rid) > 1024:
        return None
    body = rid.removeprefix("rsv_")
    try:
        fields = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not (isinstance(fields, list) and len(fields) == 4):
        return None
    if not all(isinstance(f, str) for f in fields) or not all(fields[:3]):
        return None
    if any(_has_control(f) for f in fields):  # never an id this service made
        return None
    return Subject(fields[1], fields[2], fields[3] or None)
