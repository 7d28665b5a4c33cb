"""The verified caller of an RPC, set by the server interceptor and read by handlers."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from leaky_tokens.runtime.errors import PermissionDeniedError, UnauthenticatedError

ADMIN = "ADMIN"
API_KEY_AUTH = "api_key"  # the `amr` value of a mesh token minted for an API-key call
API_KEY_NOT_ALLOWED = "API_KEY_NOT_ALLOWED"  # ErrorInfo reason of refuse_api_key


def mesh_audience(audience: str) -> str:
    """The audience of tokens the auth service mints for API-key calls at the edge (ADR 0041):
    the services accept it beside `audience`; the edge's jwt_authn accepts only `audience`."""
    return audience + "#mesh"


@dataclass(frozen=True)
class Caller:
    """Identity proven by a verified token: never taken from a client-supplied header."""

    user_id: str
    roles: frozenset[str]
    org_ids: frozenset[str]
    token_id: str = ""
    api_key_id: str = ""  # set when the call was made with an API key (through the edge)

    @property
    def is_admin(self) -> bool:
        """True for the ADMIN role."""
        return ADMIN in self.roles


caller_var: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def current_caller() -> Caller:
    """The verified caller of the RPC being handled; raises if the RPC is unauthenticated."""
    caller = caller_var.get()
    if caller is None:
        raise UnauthenticatedError("authentication required", reason="MISSING_CREDENTIALS")
    return caller


def refuse_api_key(caller: Caller, action: str) -> None:
    """PERMISSION_DENIED (API_KEY_NOT_ALLOWED) when the call was made with an API key.

    A key acts as its owner for metered work (consume, quota, reservations, analytics reads,
    listing organizations and their members), never to administer identity or money: it
    cannot create, list or revoke API keys, rotate signing keys, create an organization,
    change its members, purchase or grant tokens (ADR 0048). A leaked key is then a spend
    risk bounded by its owner's limits, not a way to mint more keys or keep access after
    revocation. Every use case of that list calls this first, before looking at its input.
    """
    if caller.api_key_id:
        raise PermissionDeniedError(
            f"an API key cannot {action}: sign in and use the bearer token",
            reason=API_KEY_NOT_ALLOWED,
            metadata={"api_key_id": caller.api_key_id},
        )
