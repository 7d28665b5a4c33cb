"""Exact integer units of the token domain: epoch milliseconds, micro-tokens, the 2**53 bound."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from leaky_tokens.runtime.errors import FieldViolation, InvalidArgumentError

# Every stored integer stays below 2**53 so the Redis Lua port (Lua 5.1 numbers are IEEE
# doubles) represents it, and every sum or difference it computes, exactly.
SAFE_LIMIT = 2**53
TOKEN_SCALE = 1_000_000  # bucket levels count micro-tokens: one LLM token = 10**6 units
MILLI = 1000  # leak rates are written with at most three decimals: milli-tokens per second

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime, floored (exact: no float on the way)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: the token domain only takes aware times")
    return (moment - _EPOCH) // _MS


def from_ms(ms: int) -> datetime:
    """The UTC datetime of epoch milliseconds."""
    return _EPOCH + timedelta(milliseconds=ms)


def ceil_div(numerator: int, denominator: int) -> int:
    """Ceiling of a non-negative integer quotient (Python ints: exact)."""
    return -(-numerator // denominator)


def token_count(value: int, field: str, minimum: int = 1) -> int:
    """A request's token count, refused as INVALID_ARGUMENT outside [minimum, 2**53)."""
    if not minimum <= value < SAFE_LIMIT:
        bound = f"between {minimum} and {SAFE_LIMIT - 1}"
        raise InvalidArgumentError([FieldViolation(field, f"must be {bound}, not {value}")])
    return value
