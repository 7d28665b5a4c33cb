"""Response metadata a handler adds to a successful unary answer (HTTP headers via Envoy)."""

from __future__ import annotations

import contextvars
from collections.abc import Mapping

# The interceptor gives every call a fresh dict and, when a handler filled it, sends it with
# x-request-id as the initial metadata of a successful unary answer (Envoy's transcoder makes
# them headers); an empty one costs nothing: the answer then goes out in a single batch.
# Errors carry their own (DomainError.headers, sent by runtime/status.py).
response_headers_var: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "response_headers", default=None
)


def add_response_headers(headers: Mapping[str, str]) -> None:
    """Add lower-case metadata to the answer of the RPC being handled (no-op outside one)."""
    found = response_headers_var.get()
    if found is not None:
        found.update(headers)
