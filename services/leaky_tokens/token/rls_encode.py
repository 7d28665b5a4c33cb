"""ShouldRateLimit's wire answer: statuses and rate-limit headers of a verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2 as pb
from leaky_tokens.token.domain.rls_config import UNIT_SECONDS, RateLimit, Unit
from leaky_tokens.token.domain.rls_decision import UINT32_MAX, Status, Verdict

_R = pb.RateLimitResponse
# RLS's Unit numbers (envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit).
_UNIT_CODES = {u: _R.RateLimit.Unit.Value(u.value) for u in Unit}


@dataclass(frozen=True, slots=True)
class Shown:
    """How a counted rule shows: its current_limit message and its RateLimit-Policy item."""

    name: str
    limit: int
    current_limit: _R.RateLimit
    policy: str
    wire: bytes = b""  # current_limit as DescriptorStatus field 2, encoded (encode_bytes)
    fixed_headers: bytes = b""  # x-ratelimit-limit, encoded (encode_bytes)
    policy_header: bytes = b""  # ratelimit-policy, encoded
    state_prefix: bytes = b""  # the RateLimit field's value up to its remaining count


def shown_of(limit: RateLimit) -> Shown | None:
    """The Shown of a counted rule (built once per plan); None for one without a unit."""
    if limit.unit is None:
        return None
    name, window = limit.name or limit.full_key, UNIT_SECONDS[limit.unit]
    current = _R.RateLimit(
        requests_per_unit=min(limit.requests_per_unit, UINT32_MAX), unit=_UNIT_CODES[limit.unit]
    )
    if limit.name:
        current.name = name
    policy = f'"{name}";q={limit.requests_per_unit};w={window}'
    return Shown(
        name,
        limit.requests_per_unit,
        current,
        policy,
        _field(0x12, current.SerializeToString()),
        _header(b"x-ratelimit-limit", str(limit.requests_per_unit)),
        _header(b"ratelimit-policy", policy),
        f'"{name}";r='.encode(),
    )


def _dynamic(s: Status) -> Shown | None:
    """A status's Shown built now: a token bucket's level is known only once charged."""
    if s.tokens is None or s.limit is None:
        return shown_of(s.limit) if s.limit is not None else None
    name, limit = f"{s.limit.token_bucket}:{s.tokens.level.value}", s.tokens.limit
    # A token bucket has no calendar unit: UNKNOWN, named after its provider and level.
    current = _R.RateLimit(
        requests_per_unit=min(limit, UINT32_MAX), unit=_R.RateLimit.UNKNOWN, name=name
    )
    return Shown(name, limit, current, f'"{name}";q={limit}')


def _seconds(ms: int) -> int:
    return -(-ms // 1000)  # ceil, in integers


def encode(
    result: Verdict,
    code: _R.Code.ValueType,
    with_headers: bool,
    shown: Sequence[Shown | None] | None = None,
) -> pb.RateLimitResponse:
    """The wire answer of a verdict; `shown` (by descriptor) saves rebuilding counted rules."""
    out = pb.RateLimitResponse(overall_code=code)
    add = out.statuses.add
    rules: list[tuple[Status, Shown]] = []
    for i, s in enumerate(result.statuses):
        st = add(code=_R.OVER_LIMIT if s.over else _R.OK, limit_remaining=s.remaining)
        rule = shown[i] if shown is not None and s.tokens is None else _dynamic(s)
        if rule is None or s.limit is None:
            continue
        st.current_limit.CopyFrom(rule.current_limit)
        st.duration_until_reset.FromMilliseconds(s.reset_after_ms)
        rules.append((s, rule))
    head = result.headline
    if not with_headers or head is None or not rules:
        return out
    top = next((r for s, r in rules if s is head), None)
    if top is None:
        return out
    # X-RateLimit-* of the headline status; RateLimit-Policy / RateLimit of every rule that
    # counted, the headline first (the TokenService's 429 shape, ADR 0017; a token bucket has
    # no window, so no `w`).
    reset = _seconds(head.reset_after_ms)
    h = out.response_headers_to_add.add
    h(key="x-ratelimit-limit", value=str(top.limit))
    h(key="x-ratelimit-remaining", value=str(head.remaining))
    h(key="x-ratelimit-reset", value=str(reset))
    state = f'"{top.name}";r={head.remaining};t={reset}'
    if len(rules) == 1:  # the usual request: one rule, nothing to join
        h(key="ratelimit-policy", value=top.policy)
        h(key="ratelimit", value=state)
        return out
    others = [(s, r) for s, r in rules if s is not head]
    h(key="ratelimit-policy", value=", ".join([top.policy, *(r.policy for _, r in others)]))
    states = (f'"{r.name}";r={s.remaining};t={_seconds(s.reset_after_ms)}' for s, r in others)
    h(key="ratelimit", value=", ".join([state, *states]))
    return out


# Protobuf wire tags of the fields encode_bytes writes (field number << 3 | wire type).
_CODE = {False: b"\x08\x01", True: b"\x08\x02"}  # overall_code / code: OK, OVER_LIMIT


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (tags below 128, as all of these are)."""
    size = len(payload)
    if size < 0x80:
        return bytes((tag, size)) + payload
    return bytes((tag,)) + _varint(size) + payload


def _header(key: bytes, value: str) -> bytes:
    return _field(0x1A, _field(0x0A, key) + _field(0x12, value.encode()))


# duration_until_reset's fields, written once: `seconds` (field 1) below a day, and `nanos`
# (field 2) of every whole millisecond (protobuf leaves a zero field out).
_SECONDS = [b""] + [b"\x08" + _varint(n) for n in range(1, 86_400)]
_NANOS = [b""] + [b"\x10" + _varint(ms * 1_000_000) for ms in range(1, 1000)]
# A header entry's key (HeaderValueOption.header.key, field 1) and the value's tag (field 2).
_REMAINING = b"\x0a\x15x-ratelimit-remaining\x12"
_RESET = b"\x0a\x11x-ratelimit-reset\x12"
_STATE = b"\x0a\x09ratelimit\x12"
# Below this many bytes a RateLimit value keeps its header entry under 128 bytes, so every
# length in the three per-answer headers is one byte.
_SHORT_STATE = 0x80 - len(_STATE) - 2


def _duration(ms: int) -> bytes:
    seconds, ms = divmod(ms, 1000)
    head = _SECONDS[seconds] if seconds < 86_400 else b"\x08" + _varint(seconds)
    return head + _NANOS[ms]


def encode_bytes(
    result: Verdict,
    code: _R.Code.ValueType,
    with_headers: bool,
    shown: Sequence[Shown | None] | None = None,
) -> bytes:
    """`encode(...)`'s serialized bytes. The usual answer (one descriptor on a counted rule)
    is written directly, byte for byte what protobuf writes for the same message (fields in
    number order; tests/unit/test_token_rls_encode_bytes.py compares them); anything else
    goes through the message."""
    one = result.statuses[0] if len(result.statuses) == 1 else None
    rule = shown[0] if shown is not None and one is not None else None
    if one is None or rule is None or not rule.wire or one.tokens is not None or one.limit is None:
        return encode(result, code, with_headers, shown).SerializeToString()
    duration = _duration(one.reset_after_ms)
    remaining = one.remaining
    status = _CODE[one.over] + rule.wire
    if remaining:
        status += b"\x18" + _varint(remaining)
    status += b"\x22%c%b" % (len(duration), duration)
    out = _CODE[code == _R.OVER_LIMIT] + _field(0x12, status)
    if not with_headers or result.headline is not one:
        return out
    left = b"%d" % remaining
    reset = b"%d" % _seconds(one.reset_after_ms)
    state = b"%b%b;t=%b" % (rule.state_prefix, left, reset)
    if len(state) >= _SHORT_STATE:  # a long rule name: lengths of more than one byte
        tail = _header(b"ratelimit", state.decode())
    else:
        tail = b"\x1a%c%b%c%b" % (len(_STATE) + 1 + len(state), _STATE, len(state), state)
    # In protobuf's order: limit, remaining, reset, policy, state. Remaining and reset are
    # at most 20 digits, so their entries' lengths are one byte.
    return b"%b%b\x1a%c%b%c%b\x1a%c%b%c%b%b%b" % (
        out,
        rule.fixed_headers,
        len(_REMAINING) + 1 + len(left),
        _REMAINING,
        len(left),
        left,
        len(_RESET) + 1 + len(reset),
        _RESET,
        len(reset),
        reset,
        rule.policy_header,
        tail,
    )
