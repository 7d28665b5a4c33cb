"""Audit events of the auth service (who did what to whom, from where), never a secret."""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass, field
from typing import Protocol

from leaky_tokens.runtime.logging import request_id_var

AUDIT_LOGGER = "leaky.audit"
OPERATOR = "operator"  # the actor of CLI actions run against the database directly

# The caller's address as the servicer saw it; audit lines carry it like the request id.
client_address_var: contextvars.ContextVar[str] = contextvars.ContextVar(
    "client_address", default=""
)

# Detail names an audit event may carry. A closed list: a secret (password, API key, token,
# key material) cannot reach the audit log by someone adding a field in passing.
ALLOWED_DETAILS = frozenset(
    {"username", "role", "reason", "key_id", "kid", "locked", "active_from"}
)


@dataclass(frozen=True)
class AuditEvent:
    """One audited action; `details` keys come from ALLOWED_DETAILS."""

    event: str  # e.g. login.failed, login.locked, role.granted, api_key.created
    outcome: str  # success | failure
    actor: str  # user id, OPERATOR, or "" for an anonymous caller
    subject: str  # the user id acted upon, or "" if there is none
    details: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.details) - ALLOWED_DETAILS
        if unknown:
            raise ValueError(f"audit detail(s) not allowed: {sorted(unknown)}")


class AuditTrail(Protocol):
    """Where audit events go."""

    def record(self, event: AuditEvent) -> None:
        """Write one event; must not raise into the use case."""


class LoggingAuditTrail:
    """Audit events as records of the `leaky.audit` logger; runtime/logging.py renders them as
    JSON lines (with the request id) next to the service's other logs."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(AUDIT_LOGGER)

    def record(self, event: AuditEvent) -> None:
        fields = {
            "event": event.event,
            "outcome": event.outcome,
            "actor": event.actor,
            "subject": event.subject,
            "client": client_address_var.get(),
            "request_id": request_id_var.get(),  # captured now, not when a handler formats
            **event.details,
        }
        self._log.info("audit %s %s", event.event, event.outcome, extra=fields)
