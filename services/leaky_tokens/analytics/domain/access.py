"""Whose usage a query may read, and whether its input is acceptable: rules, no I/O.

Every query reads one scope, chosen by its optional user_id and org_id (the proto's service
comment): org_id set reads that organization (members and ADMIN); user_id set reads that
user (the user and ADMIN); neither reads everything for ADMIN and the caller's own usage for
anyone else; both set is a bad argument. Membership is asked of the auth service at query
time, not read from the JWT, whose org list may be stale (ADR 0023).
"""

from __future__ import annotations

from leaky_tokens.analytics.domain.ports import Scope, ScopeKind
from leaky_tokens.runtime.errors import PermissionDeniedError, Validator
from leaky_tokens.runtime.identity import Caller
from leaky_tokens.runtime.ports import Membership

MAX_ID = 128  # user and org ids are UUIDs; this bounds anything else (as the token service)
MAX_PROVIDER = 64  # characters of a provider name


class NotYourUserError(PermissionDeniedError):
    """A caller other than ADMIN named another user's usage."""

    reason = "NOT_YOUR_USER_ID"

    def __init__(self) -> None:
        super().__init__("only ADMIN may read another user's usage")


class NotOrgMemberError(PermissionDeniedError):
    """The caller is not (or no longer) a member of the organization named."""

    reason = "NOT_ORG_MEMBER"

    def __init__(self, org_id: str) -> None:
        super().__init__(f"not a member of organization {org_id}", metadata={"orgId": org_id})


def check_ids(check: Validator, user_id: str, org_id: str) -> None:
    """Record violations of the scope ids (JSON field names userId and orgId)."""
    for name, value in (("userId", user_id), ("orgId", org_id)):
        if len(value) > MAX_ID:
            check.fail(name, f"must be at most {MAX_ID} characters")
        elif value != value.strip() or _has_control(value):
            check.fail(name, "must not contain spaces at its ends or control characters")
    if user_id and org_id:
        check.fail("orgId", "must not be set together with userId (one scope per query)")


def check_provider(check: Validator, provider: str) -> None:
    """Record a violation unless `provider` looks like a policy's provider name.

    The analytics service does not read the token service's policy, so a well-formed name it
    has no usage for is not an error: it has no events.
    """
    if not provider:
        check.fail("provider", "is required")
    elif len(provider) > MAX_PROVIDER:
        check.fail("provider", f"must be at most {MAX_PROVIDER} characters")
    elif provider != provider.strip().lower() or _has_control(provider):
        check.fail("provider", "must be a lower-case provider name, e.g. 'openai'")


async def resolve_scope(
    caller: Caller, credential: str, user_id: str, org_id: str, membership: Membership
) -> Scope:
    """The scope a query reads; PERMISSION_DENIED when the caller may not read it.

    The ids must have passed `check_ids` (both set is refused there).
    """
    if org_id:
        if not caller.is_admin and org_id not in await membership.org_ids(
            caller.user_id, credential
        ):
            raise NotOrgMemberError(org_id)
        return Scope(ScopeKind.ORG, org_id)
    if user_id:
        if user_id != caller.user_id and not caller.is_admin:
            raise NotYourUserError()
        return Scope(ScopeKind.USER, user_id)
    return Scope.everyone() if caller.is_admin else Scope(ScopeKind.USER, caller.user_id)


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)
