"""Operator use cases on roles (grant, revoke), audited; shared by AuthApp and the CLI."""

from __future__ import annotations

from dataclasses import replace

from leaky_tokens.auth.domain.audit import AuditEvent, AuditTrail
from leaky_tokens.auth.domain.model import ADMIN, USER, User
from leaky_tokens.auth.domain.ports import AuthStore
from leaky_tokens.runtime.errors import NotFoundError

ROLES = (USER, ADMIN)


async def _user(store: AuthStore, username: str, role: str) -> User:
    if role not in ROLES:
        raise NotFoundError(f"unknown role {role!r}", reason="ROLE_NOT_FOUND")
    user = await store.get_user_by_username(username)
    if user is None:
        raise NotFoundError(f"user {username!r} not found", reason="USER_NOT_FOUND")
    return user


async def grant_role(
    store: AuthStore, audit: AuditTrail, username: str, role: str, actor: str
) -> User:
    """Give a user a role (idempotent), e.g. bootstrap the first ADMIN."""
    user = await _user(store, username, role)
    await store.grant_role(user.id, role)
    audit.record(
        AuditEvent(
            "role.granted", "success", actor, user.id, {"username": user.username, "role": role}
        )
    )
    return replace(user, roles=user.roles | {role})


async def revoke_role(
    store: AuthStore, audit: AuditTrail, username: str, role: str, actor: str
) -> User:
    """Take a role from a user; NOT_FOUND if they do not have it."""
    user = await _user(store, username, role)
    if not await store.revoke_role(user.id, role):
        raise NotFoundError(f"{user.username} does not have role {role}", reason="ROLE_NOT_HELD")
    audit.record(
        AuditEvent(
            "role.revoked", "success", actor, user.id, {"username": user.username, "role": role}
        )
    )
    return replace(user, roles=user.roles - {role})
