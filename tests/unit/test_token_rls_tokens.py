"""Token descriptors: a policy `token_bucket` rule charges LLM tokens to the user's levels."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2 as pb
from leaky_tokens.runtime.errors import InvalidArgumentError
from leaky_tokens.token.adapters.in_memory_decision_store import InMemoryDecisionStore
from leaky_tokens.token.adapters.in_memory_rate_counter import InMemoryRequestCounter
from leaky_tokens.token.domain.policy_parse import parse_policy
from leaky_tokens.token.domain.rls_tokens import TokenDescriptors
from leaky_tokens.token.rls_servicer import RateLimitServicer
from leaky_tokens.token.rls_wiring import SHIPPED_POLICY
from tests.support.fakes import FakeClock

R = pb.RateLimitResponse
START = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
POLICY = parse_policy(SHIPPED_POLICY.read_text(), str(SHIPPED_POLICY))
EXTRA = """
    - key: shadow_provider
      value: openai
      descriptors:
        - key: user_id
          token_bucket: openai
          shadow_mode: true
"""


def request(user: str, tokens: int, provider_key: str = "provider") -> pb.RateLimitRequest:
    req = pb.RateLimitRequest(domain="leaky", hits_addend=tokens)
    d = req.descriptors.add()
    d.entries.add(key=provider_key, value="openai")
    d.entries.add(key="user_id", value=user)
    return req


def service(clock: FakeClock, store: InMemoryDecisionStore) -> RateLimitServicer:
    text = SHIPPED_POLICY.read_text().rstrip() + "\n" + EXTRA
    policy = parse_policy(text, "policy.yaml")
    ids = (f"d{n}" for n in itertools.count())
    tokens = TokenDescriptors(store, lambda: policy, lambda: next(ids))
    return RateLimitServicer(
        lambda: policy.rate_limits, InMemoryRequestCounter(), clock, tokens=tokens
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


async def ask(rls: RateLimitServicer, req: pb.RateLimitRequest) -> pb.RateLimitResponse:
    return await rls.ShouldRateLimit(req, None)  # type: ignore[arg-type]


async def test_tokens_are_debited_from_the_users_bucket_until_it_is_full(
    clock: FakeClock,
) -> None:
    rls = service(clock, InMemoryDecisionStore())
    first = await ask(rls, request("u1", 1500))
    assert first.overall_code == R.OK
    status = first.statuses[0]
    # USER tier, openai: a 2000-token bucket; the tightest level reports 500 left.
    assert (status.current_limit.requests_per_unit, status.limit_remaining) == (2000, 500)
    assert status.current_limit.name == "openai:user_bucket"
    assert status.current_limit.unit == R.RateLimit.UNKNOWN
    refused = await ask(rls, request("u1", 1000))
    assert refused.overall_code == R.OVER_LIMIT
    assert refused.statuses[0].code == R.OVER_LIMIT
    # 500 more tokens must leak out at 20/s before 1000 fit: 25 s.
    assert refused.statuses[0].duration_until_reset.ToMilliseconds() == 25_000
    headers = {h.key: h.value for h in refused.response_headers_to_add}
    assert headers["x-ratelimit-limit"] == "2000"
    assert headers["ratelimit-policy"].startswith('"openai:user_bucket";q=2000')
    other = await ask(rls, request("u2", 1000))
    assert other.overall_code == R.OK  # the value names the user: each has a bucket


async def test_the_bucket_leaks_on_the_clock(clock: FakeClock) -> None:
    rls = service(clock, InMemoryDecisionStore())
    await ask(rls, request("u1", 2000))
    assert (await ask(rls, request("u1", 100))).overall_code == R.OVER_LIMIT
    clock.advance(seconds=5)
    assert (await ask(rls, request("u1", 100))).overall_code == R.OK


async def test_a_shadow_token_rule_is_charged_but_answers_ok(clock: FakeClock) -> None:
    rls = service(clock, InMemoryDecisionStore())
    await ask(rls, request("u1", 2000, "shadow_provider"))
    over = await ask(rls, request("u1", 100, "shadow_provider"))
    assert over.overall_code == R.OK
    assert over.statuses[0].code == R.OK
    assert rls.metrics.shadow.labels("leaky.shadow_provider_openai.user_id")._value.get() == 1


async def test_tokens_are_not_charged_when_a_request_rule_refuses(clock: FakeClock) -> None:
    store = InMemoryDecisionStore()
    rls = service(clock, store)
    both = pb.RateLimitRequest(domain="leaky", hits_addend=1)
    both.descriptors.add().entries.add(key="user_id", value="u3")  # 200 a minute
    both.descriptors[0].hits_addend.value = 201
    tokens = both.descriptors.add()
    tokens.entries.add(key="provider", value="openai")
    tokens.entries.add(key="user_id", value="u3")
    tokens.hits_addend.value = 1000
    refused = await ask(rls, both)
    assert refused.overall_code == R.OVER_LIMIT
    assert not refused.statuses[1].HasField("current_limit")  # not charged
    full = await ask(rls, request("u3", 2000))
    assert full.overall_code == R.OK  # the whole bucket was still there


def test_the_shipped_policy_maps_provider_descriptors_to_token_buckets() -> None:
    match = POLICY.rate_limits.match("leaky", [("provider", "qwen"), ("user_id", "x")])
    assert match is not None
    assert match.limit.token_bucket == "qwen"


async def test_a_token_descriptor_without_a_user_is_invalid(clock: FakeClock) -> None:
    rls = service(clock, InMemoryDecisionStore())
    with pytest.raises(InvalidArgumentError) as caught:
        await ask(rls, request("", 10))
    assert [v.field for v in caught.value.violations] == ["descriptors[0].entries[1].value"]
