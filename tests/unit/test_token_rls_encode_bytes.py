"""ShouldRateLimit's directly written answer equals protobuf's serialization (ADR 0034)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2 as pb
from leaky_tokens.token.domain.decision import Level, LevelStatus
from leaky_tokens.token.domain.rls_config import RateLimit, Unit
from leaky_tokens.token.domain.rls_decision import Status, Verdict
from leaky_tokens.token.rls_encode import encode, encode_bytes, shown_of

R = pb.RateLimitResponse
UINT32_MAX = 2**32 - 1


@given(
    over=st.booleans(),
    remaining=st.integers(0, UINT32_MAX),
    reset_ms=st.integers(0, 400 * 86_400_000),
    headers=st.booleans(),
    # Names around the length where the RateLimit header's lengths take a second byte.
    name=st.sampled_from(["", "per_user", "ünïcode rule"])
    | st.integers(80, 140).map(lambda n: "r" * n),
    per_unit=st.integers(1, 2**40),
    unit=st.sampled_from(list(Unit)),
)
def test_one_counted_descriptor_is_written_as_protobuf_writes_it(
    over: bool,
    remaining: int,
    reset_ms: int,
    headers: bool,
    name: str,
    per_unit: int,
    unit: Unit,
) -> None:
    limit = RateLimit("leaky.user_id_u1", per_unit, unit, name=name)
    status = Status(over, limit, remaining, reset_ms)
    result = Verdict(over, (status,), status)
    shown = (shown_of(limit),)
    code = R.OVER_LIMIT if over else R.OK
    expected = encode(result, code, headers, shown).SerializeToString()
    assert encode_bytes(result, code, headers, shown) == expected


def test_other_answers_go_through_the_message() -> None:
    limit = RateLimit("leaky.a_b", 5, Unit.MINUTE)
    counted = Status(False, limit, 4, 1500)
    two = Verdict(False, (counted, Status(False)), counted)
    shown = (shown_of(limit), None)
    assert (
        encode_bytes(two, R.OK, True, shown) == encode(two, R.OK, True, shown).SerializeToString()
    )
    unmatched = Verdict(False, (Status(False),), None)
    assert (
        encode_bytes(unmatched, R.OK, True, (None,))
        == encode(unmatched, R.OK, True, (None,)).SerializeToString()
    )
    bucket = RateLimit("leaky.user_u1", token_bucket="openai")
    level = LevelStatus(Level.USER_BUCKET, 100, 40, 2000)
    tokens = Status(False, bucket, 40, 2000, tokens=level)
    charged = Verdict(False, (tokens,), tokens)
    parsed = R.FromString(encode_bytes(charged, R.OK, True, (None,)))
    assert parsed == encode(charged, R.OK, True, (None,))
    assert parsed.statuses[0].current_limit.name == "openai:user_bucket"
