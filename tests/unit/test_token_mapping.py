"""The Consume/Reserve mapping: headers made from domain values say what the messages say."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import duration_pb2, struct_pb2

from leaky.token.v1 import limits_pb2 as lpb
from leaky_tokens.runtime.identity import Caller
from leaky_tokens.token import mapping
from leaky_tokens.token.adapters.in_memory_decision_store import InMemoryDecisionStore
from leaky_tokens.token.domain import access
from leaky_tokens.token.domain.decision import Level
from leaky_tokens.token.domain.metering import Consumed, LimitDeniedError, Metering
from leaky_tokens.token.domain.peers import ChatCall
from leaky_tokens.token.domain.policy_parse import parse_policy
from leaky_tokens.token.domain.ports import Subject

POLICY = """\
providers:
  openai: {capacity: 100, leak_rate: 1.5}
tiers:
  USER: {priority: 10, capacity_multiplier: 1, rate_multiplier: 1, quota_tokens: 150}
default_tier: USER
orgs:
  default: {capacity_multiplier: 10, rate_multiplier: 10, quota_tokens: 1000}
  overrides: {}
quota: {window: weekly, timezone: UTC}
"""
NOW = datetime(2026, 12, 3, 12, 0, 0, 400_000, tzinfo=UTC)
ANSWER = {"id": "c-1", "received": {"prompt": "hi", "n": {"deep": "x"}}, "message": "ok"}


class _Policy:
    current = parse_policy(POLICY)


class _Clock:
    def now(self) -> datetime:
        return NOW


class _Ids:
    def __init__(self) -> None:
        self.n = 0

    def new_id(self) -> str:
        self.n += 1
        return f"d{self.n:06d}"

    def secret(self, nbytes: int) -> str:
        return "s" * nbytes


class _Members:
    async def org_ids(self, user_id: str, credential: str) -> frozenset[str]:
        return frozenset({"org-1"})


class _Provider:
    async def chat(self, call: ChatCall) -> dict[str, object]:
        return dict(ANSWER)


def _metering(store: InMemoryDecisionStore) -> Metering:
    return Metering(
        policy=_Policy(), store=store, membership=_Members(), provider=_Provider(),
        clock=_Clock(), ids=_Ids(), limits=access.Limits(1_000_000),
        max_reservation_ttl=timedelta(minutes=5),
    )  # fmt: skip


CALLER = Caller("u-1", frozenset({"USER"}), frozenset({"org-1"}))


def _seconds(value: duration_pb2.Duration) -> int:
    return math.ceil(value.ToMilliseconds() / 1000)


def _headers_read_back(found: list[lpb.LimitStatus], level: int) -> dict[str, str]:
    """The headers as they were made before: read back from the LimitStatus messages."""
    first = next(s for s in found if s.level == level)
    ordered = [first, *(s for s in found if s is not first and s.HasField("window"))]
    return {
        "x-ratelimit-limit": str(first.limit),
        "x-ratelimit-remaining": str(first.remaining),
        "x-ratelimit-reset": str(_seconds(first.reset_after)),
        "ratelimit-policy": ", ".join(
            f'"{s.name}";q={s.limit};w={_seconds(s.window)}' for s in ordered
        ),
        "ratelimit": ", ".join(
            f'"{s.name}";r={s.remaining};t={_seconds(s.reset_after)}' for s in ordered
        ),
    }


def _allowed_read_back(found: list[lpb.LimitStatus]) -> dict[str, str]:
    windowed = [s for s in found if s.HasField("window")]
    return _headers_read_back(found, min(windowed, key=lambda s: s.remaining).level)


async def _consumed(tokens: int, org: str = "org-1", balance: int = 0) -> Consumed:
    store = InMemoryDecisionStore()
    if balance:
        level = Level.ORG_QUOTA if org else Level.USER_QUOTA
        await store.credit_balance(Subject("u-1", "openai", org or None), level, balance, "g-1",
                                   int(NOW.timestamp() * 1000))  # fmt: skip
    m = _metering(store)
    await m.consume(CALLER, "", "u-1", org, "openai", 40, "hi", "")
    return await m.consume(CALLER, "", "u-1", org, "openai", tokens, "hi", "")


CASES = [(1, "org-1", 0), (55, "", 0), (60, "org-1", 25), (7, "", 9)]


@pytest.mark.parametrize(("tokens", "org", "balance"), CASES)
async def test_allowed_headers_are_what_the_messages_report(
    tokens: int, org: str, balance: int
) -> None:
    done = await _consumed(tokens, org, balance)
    out, headers = mapping.consume_response(done)
    found = list(out.limits)
    assert headers == _allowed_read_back(found)
    # every level is there once, windows and resets set where the contract has them
    by_level = {s.level: s for s in found}
    assert len(by_level) == len(found) == (6 if org else 3)
    purchased = [s for s in found if s.level in (lpb.LIMIT_LEVEL_USER_PURCHASED,
                                                 lpb.LIMIT_LEVEL_ORG_PURCHASED)]  # fmt: skip
    assert all(not s.HasField("window") and not s.HasField("reset_after") for s in purchased)
    assert by_level[lpb.LIMIT_LEVEL_USER_BUCKET].window.ToMilliseconds() == 66_667
    assert by_level[lpb.LIMIT_LEVEL_USER_QUOTA_WINDOW].unit == lpb.LIMIT_UNIT_WEEK
    assert by_level[lpb.LIMIT_LEVEL_USER_QUOTA_WINDOW].reset_after.ToMilliseconds() == (
        4 * 86_400_000 - 12 * 3_600_000 - 400
    )
    assert out.timestamp.ToMilliseconds() == int(NOW.timestamp() * 1000)
    assert (out.remaining, out.used) == (100 - 40 - tokens, 40 + tokens)


async def test_the_tightest_level_leads_the_allowed_headers() -> None:
    done = await _consumed(55, "")  # bucket 5 left, user quota 55 left
    _, headers = mapping.consume_response(done)
    assert headers["x-ratelimit-remaining"] == "5"
    assert headers["ratelimit"].startswith('"openai/user-bucket";r=5;')
    assert headers["x-ratelimit-reset"] == "64"  # 95 tokens at 1.5/s: 63.33 s, rounded up


async def test_a_denial_carries_the_same_headers_as_its_detail() -> None:
    m = _metering(InMemoryDecisionStore())
    await m.consume(CALLER, "", "u-1", "org-1", "openai", 90, "hi", "")
    with pytest.raises(LimitDeniedError) as info:
        await m.consume(CALLER, "", "u-1", "org-1", "openai", 30, "hi", "")
    error = mapping.denial(info.value)
    (decision,) = error.details
    assert isinstance(decision, lpb.LimitDecision)
    assert error.headers == _headers_read_back(list(decision.limits),
                                               lpb.LIMIT_LEVEL_USER_BUCKET)  # fmt: skip
    over = [s for s in decision.limits if s.code == lpb.LIMIT_CODE_OVER_LIMIT]
    assert [s.level for s in over] == [lpb.LIMIT_LEVEL_USER_BUCKET]
    assert over[0].retry_after.ToMilliseconds() == 13_334


def test_whole_seconds_round_up_exactly() -> None:
    assert [mapping._seconds(ms) for ms in (None, 0, 1, 999, 1000, 1001, -1, -1000)] == [
        0, 0, 1, 1, 1, 2, 0, -1]  # fmt: skip
    big = 2**52 + 1  # ms/1000 as a float loses the remainder here; integers do not
    assert mapping._seconds(big) == big // 1000 + 1


@pytest.mark.parametrize(
    "values",
    [
        ANSWER,
        {"s": "x", "b": True, "f": False, "i": 3, "x": 2.5, "none": None, "l": [1, "a", {"k": []}]},
        {"nested": {"a": {"b": {"c": "d"}}, "t": (1, 2)}, "empty": {}},
    ],
)
def test_struct_fills_as_struct_update_does(values: dict[str, object]) -> None:
    fast, reference = struct_pb2.Struct(), struct_pb2.Struct()
    reference.update(values)  # type: ignore[arg-type]
    mapping.struct(fast, values)
    assert fast == reference


def test_struct_replaces_what_a_key_held() -> None:
    target = struct_pb2.Struct()
    target.update({"a": {"old": 1}, "b": 5})
    mapping.struct(target, {"a": {"new": "x"}, "b": "y"})
    reference = struct_pb2.Struct()
    reference.update({"a": {"new": "x"}, "b": "y"})
    assert target == reference
