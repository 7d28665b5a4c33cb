"""Pages of list results: sizes, and opaque page tokens that carry a keyset position."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from leaky_tokens.runtime.errors import Validator

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list; `next_token` is empty on the last page."""

    items: list[T]
    next_token: str = ""


def check_page_size(v: Validator, requested: int) -> int:
    """0 means the default; above the maximum is capped to it (as AIP-158 asks); < 0 is bad."""
    if requested < 0:
        v.fail("page_size", "must not be negative")
        return DEFAULT_PAGE_SIZE
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(kind: str, position: list[str]) -> str:
    """A token for the position after the last item of a page of `kind`.

    Opaque to clients (base64url JSON): it names a position in a stable order, not an offset,
    so items added or removed meanwhile neither repeat nor skip the rest.
    """
    raw = json.dumps({"k": kind, "p": position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def check_token(v: Validator, kind: str, token: str, width: int) -> list[str] | None:
    """The position a token of `kind` carries; None for no token; a violation if malformed."""
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        data = None
    position = data.get("p") if isinstance(data, dict) and data.get("k") == kind else None
    if (
        not isinstance(position, list)
        or len(position) != width
        or not all(isinstance(p, str) for p in position)
    ):
        v.fail("page_token", "is not a page token of this list")
        return None
    return position


def page_of(items: list[T], size: int, kind: str, position_of: Callable[[T], list[str]]) -> Page[T]:
    """The first `size` of `items` (fetched as size + 1), with a token if more follow."""
    if len(items) <= size:
        return Page(items)
    kept = items[:size]
    return Page(kept, encode_token(kind, position_of(kept[-1])))
