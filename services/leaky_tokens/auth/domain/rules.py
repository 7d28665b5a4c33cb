"""Input rules for users, API keys and organizations."""

from __future__ import annotations

import re
import unicodedata
import uuid

from leaky_tokens.auth.domain.model import name_key
from leaky_tokens.runtime.errors import Validator

# 3-32 ASCII letters and digits; '.', '_' and '-' only between two of them, so names read
# unambiguously ("a.b-c" yes; "...", "-..-", "a..b", ".a" no).
USERNAME_RE = re.compile(r"(?=.{3,32}\Z)[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")
USERNAME_RULE = (
    "must be 3-32 characters: letters and digits, with '.', '_' or '-' only between them"
)
# Names registered before the stricter rule: still looked up at login, never registered anew.
LEGACY_USERNAME_RE = re.compile(r"[A-Za-z0-9._-]{3,50}")
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$")
MIN_PASSWORD = 8
MAX_PASSWORD = 256  # bounds hashing cost per request
MAX_EMAIL = 100
MAX_KEY_NAME = 100
MAX_ORG_NAME = 100
MAX_NAME_KEY = 400  # the stores' name_key column; NFKC + casefold can lengthen a name


CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# Invisible or direction-changing characters: a name containing them can look like another
# name (or reverse the text around it, U+202E) when shown. Categories Cc, Cf, Zl, Zp cover
# most; the set below names the bidi controls and the zero-width and filler characters that
# are outside those categories in some Unicode versions.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
_INVISIBLE = frozenset(
    [
        0x061C,  # Arabic letter mark
        0x115F,  # Hangul fillers
        0x1160,
        0x3164,
        0xFFA0,
        0x180E,  # Mongolian vowel separator
        0xFEFF,  # zero-width no-break space (BOM)
        *range(0x200B, 0x2010),  # zero-width space, non-joiner, joiner; LRM, RLM
        *range(0x202A, 0x202F),  # LRE, RLE, PDF, LRO, RLO
        *range(0x2060, 0x2065),  # word joiner, invisible operators
        *range(0x2066, 0x206A),  # LRI, RLI, FSI, PDI
    ]
)


# Unassigned (Cn) and private-use (Co) code points have no agreed glyph or case mapping, and
# surrogates (Cs) are not characters: any of them could render like anything.
_UNDEFINED_CATEGORIES = frozenset({"Cn", "Co", "Cs"})
# Characters that draw nothing but are not whitespace to str.isspace: Braille blank and the
# Hangul fillers (the fillers are also refused as invisible).
_BLANKS = frozenset("\u2800\u115f\u1160\u3164\uffa0")


def has_undefined(text: str) -> bool:
    """True if `text` holds an unassigned, private-use or surrogate code point."""
    return any(unicodedata.category(c) in _UNDEFINED_CATEGORIES for c in text)


def is_blank(text: str) -> bool:
    """True if `text` has no visible character: only whitespace and blank fillers."""
    return all(c.isspace() or c in _BLANKS for c in text)


def has_invisible(text: str) -> bool:
    """True if `text` holds a control, format, line/paragraph separator or bidi character."""
    return any(
        ord(c) in _INVISIBLE or unicodedata.category(c) in _INVISIBLE_CATEGORIES for c in text
    )


def check_text(v: Validator, field_name: str, value: str, max_len: int, *, required: bool) -> str:
    """Free text: stripped, no control or invisible characters, bounded length."""
    text = v.require(field_name, value) if required else value.strip()
    if has_invisible(text):
        v.fail(field_name, "must not contain control, invisible or bidirectional characters")
    elif has_undefined(text):
        v.fail(field_name, "must not contain unassigned or private-use characters")
    elif text and is_blank(text):
        v.fail(field_name, "must contain a visible character")
    elif len(text) > max_len:
        v.fail(field_name, f"must be at most {max_len} characters")
    return text


def check_org_name(v: Validator, name: str) -> str:
    """Free text (check_text) whose uniqueness key (model.name_key) fits the stores."""
    text = check_text(v, "name", name, MAX_ORG_NAME, required=True)
    if len(name_key(text)) > MAX_NAME_KEY:
        v.fail("name", f"must be at most {MAX_NAME_KEY} characters once normalised")
    return text


def check_username(v: Validator, username: str) -> str:
    """The registration pattern (USERNAME_RULE)."""
    value = v.require("username", username)
    if value and has_invisible(value):
        v.fail("username", "must not contain control, invisible or bidirectional characters")
    elif value and not USERNAME_RE.fullmatch(value):
        v.fail("username", USERNAME_RULE)
    return value


def check_email(v: Validator, email: str) -> str:
    """A plausible address, lower-cased."""
    value = v.require("email", email).lower()
    if value and (len(value) > MAX_EMAIL or not EMAIL_RE.match(value) or has_invisible(value)):
        v.fail("email", "must be a valid email address of at most 100 characters")
    return value


def check_login_password(v: Validator, password: str) -> str:
    """Present and not only whitespace; taken exactly as given, never stripped."""
    if not password.strip():
        v.fail("password", "is required")
    return password


def check_password(v: Validator, password: str) -> str:
    """At least 8 characters (not all blank), at most 256; taken exactly as given."""
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
