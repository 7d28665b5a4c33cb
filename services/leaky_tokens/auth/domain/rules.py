"""Input rules for users, API keys and organizations."""

from __future__ import annotations

import re
import uuid

from leaky_tokens.runtime.errors import Validator

USERNAME_RE = re.compile(r"[A-Za-z0-9._-]{3,50}")
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$")
MIN_PASSWORD = 8
MAX_PASSWORD = 256  # bounds hashing cost per request
MAX_EMAIL = 100
MAX_KEY_NAME = 100
MAX_ORG_NAME = 100


CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def check_text(v: Validator, field_name: str, value: str, max_len: int, *, required: bool) -> str:
    """Free text: stripped, no control characters, bounded length."""
    text = v.require(field_name, value) if required else value.strip()
    if CONTROL_RE.search(text):
        v.fail(field_name, "must not contain control characters")
    elif len(text) > max_len:
        v.fail(field_name, f"must be at most {max_len} characters")
    return text


def check_username(v: Validator, username: str) -> str:
    """3-50 letters, digits, '.', '_' or '-'."""
    value = v.require("username", username)
    if value and not USERNAME_RE.fullmatch(value):
        v.fail("username", "must be 3-50 characters of letters, digits, '.', '_' or '-'")
    return value


def check_email(v: Validator, email: str) -> str:
    """A plausible address, lower-cased."""
    value = v.require("email", email).lower()
    if value and (len(value) > MAX_EMAIL or not EMAIL_RE.match(value) or CONTROL_RE.search(value)):
        v.fail("email", "must be a valid email address of at most 100 characters")
    return value


def check_password(v: Validator, password: str) -> str:
    """At least 8 characters (not all blank), at most 256."""
    if not password.strip():
        v.fail("password", "is required")
    elif "\x00" in password:
        v.fail("password", "must not contain NUL characters")
    elif len(password) < MIN_PASSWORD:
        v.fail("password", f"must be at least {MIN_PASSWORD} characters")
    elif len(password) > MAX_PASSWORD:
        v.fail("password", f"must be at most {MAX_PASSWORD} characters")
    return password


def check_uuid(v: Validator, field_name: str, value: str) -> str:
    """A required UUID, normalised to lower-case canonical form."""
    raw = v.require(field_name, value)
    if not raw:
        return raw
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        v.fail(field_name, "must be a UUID")
        return raw
