"""ShouldRateLimit: matching -> limits, hits_addend, shadow, unlimited, statuses, headers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from leaky.vendor.envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import RateLimitDescriptor
from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2 as pb
from leaky.vendor.envoy.type.v3 import ratelimit_unit_pb2 as units_pb
from leaky_tokens.runtime.errors import InvalidArgumentError
from leaky_tokens.token.adapters.in_memory_rate_counter import InMemoryRequestCounter
from leaky_tokens.token.domain.policy_parse import parse_policy
from leaky_tokens.token.domain.rls_decision import UINT32_MAX
from leaky_tokens.token.domain.rls_parse import parse_rate_limit_files
from leaky_tokens.token.rls_servicer import RateLimitServicer, decode
from leaky_tokens.token.rls_wiring import SHIPPED_POLICY
from tests.support.fakes import FakeClock

R = pb.RateLimitResponse
CONFIG = """
domain: edge
descriptors:
  - key: api_key
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: api_key
    value: vip
    rate_limit: {unlimited: true}
  - key: path
    value: /slow
    shadow_mode: true
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: tenant
    descriptors:
      - key: plan
        value: gold
        rate_limit: {unit: hour, requests_per_unit: 100, name: gold}
      - key: plan
        rate_limit: {unit: hour, requests_per_unit: 10, name: base, replaces: [{name: gold}]}
"""
# 10 s into a minute, an hour and a day: resets are easy to read.
START = datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)


def request(
    *descriptors: dict[str, str], hits: int = 0, domain: str = "edge"
) -> pb.RateLimitRequest:
    req = pb.RateLimitRequest(domain=domain, hits_addend=hits)
    for entries in descriptors:
        d = req.descriptors.add()
        for key, value in entries.items():
            d.entries.add(key=key, value=value)
    return req


@pytest.fixture
def service() -> RateLimitServicer:
    config = parse_rate_limit_files([("edge.yaml", CONFIG)])
    return RateLimitServicer(lambda: config, InMemoryRequestCounter(), FakeClock(START))


async def ask(service: RateLimitServicer, req: pb.RateLimitRequest) -> pb.RateLimitResponse:
    return await service.ShouldRateLimit(req, None)  # type: ignore[arg-type]


async def test_a_limit_answers_remaining_then_over_limit_with_reset(
    service: RateLimitServicer,
) -> None:
    answers = [await ask(service, request({"api_key": "k1"})) for _ in range(4)]
    assert [a.overall_code for a in answers] == [R.OK, R.OK, R.OK, R.OVER_LIMIT]
    assert [a.statuses[0].limit_remaining for a in answers] == [2, 1, 0, 0]
    last = answers[-1].statuses[0]
    assert last.code == R.OVER_LIMIT
    assert (last.current_limit.requests_per_unit, last.current_limit.unit) == (
        3,
        R.RateLimit.MINUTE,
    )
    assert last.duration_until_reset.seconds == 50
    other = await ask(service, request({"api_key": "k2"}))
    assert other.overall_code == R.OK  # each value has its own counter


async def test_hits_addend_counts_that_many_and_zero_means_one(service: RateLimitServicer) -> None:
    first = await ask(service, request({"api_key": "h"}, hits=2))
    assert first.statuses[0].limit_remaining == 1
    assert (await ask(service, request({"api_key": "h"}, hits=2))).overall_code == R.OVER_LIMIT
    assert (await ask(service, request({"api_key": "h"}))).statuses[0].limit_remaining == 0


async def test_a_descriptors_own_hits_addend_overrides_the_requests(
    service: RateLimitServicer,
) -> None:
    req = request({"api_key": "d"}, hits=1)
    req.descriptors[0].hits_addend.value = 3
    assert (await ask(service, req)).statuses[0].limit_remaining == 0


async def test_unlimited_and_unmatched_descriptors_are_ok_without_a_limit(
    service: RateLimitServicer,
) -> None:
    for _ in range(5):
        answer = await ask(service, request({"api_key": "vip"}, {"nothing": "here"}))
    assert answer.overall_code == R.OK
    vip, unmatched = answer.statuses
    assert (vip.code, vip.limit_remaining, vip.HasField("current_limit")) == (
        R.OK,
        UINT32_MAX,
        False,
    )
    assert (unmatched.limit_remaining, unmatched.HasField("current_limit")) == (0, False)
    assert list(answer.response_headers_to_add) == []  # no counted rule, nothing to describe


async def test_shadow_mode_counts_and_reports_but_answers_ok(service: RateLimitServicer) -> None:
    for _ in range(3):
        answer = await ask(service, request({"path": "/slow"}))
    assert answer.overall_code == R.OK
    assert (answer.statuses[0].code, answer.statuses[0].limit_remaining) == (R.OK, 0)
    assert service.metrics.shadow.labels("edge.path_/slow")._value.get() == 2


async def test_any_over_limit_descriptor_refuses_and_the_others_count_nothing(
    service: RateLimitServicer,
) -> None:
    for _ in range(3):
        await ask(service, request({"api_key": "full"}))
    both = await ask(service, request({"api_key": "free"}, {"api_key": "full"}))
    assert both.overall_code == R.OVER_LIMIT
    assert [s.code for s in both.statuses] == [R.OK, R.OVER_LIMIT]
    alone = await ask(service, request({"api_key": "free"}))
    assert alone.statuses[0].limit_remaining == 2  # the refused request did not count


async def test_nested_descriptors_and_replaces(service: RateLimitServicer) -> None:
    gold = await ask(service, request({"tenant": "t", "plan": "gold"}))
    assert gold.statuses[0].current_limit.name == "gold"
    assert gold.statuses[0].limit_remaining == 99
    both = await ask(
        service, request({"tenant": "t", "plan": "gold"}, {"tenant": "t", "plan": "x"})
    )
    # "base" replaces "gold": the gold descriptor is no longer limited at all.
    assert both.statuses[0].HasField("current_limit") is False
    assert both.statuses[1].current_limit.name == "base"


async def test_a_request_side_override_replaces_the_configured_rule(
    service: RateLimitServicer,
) -> None:
    req = request({"api_key": "o"})
    req.descriptors[0].limit.requests_per_unit = 1
    req.descriptors[0].limit.unit = units_pb.DAY  # envoy.type.v3's enum, not RLS's
    first, second = await ask(service, req), await ask(service, req)
    assert first.statuses[0].current_limit.unit == R.RateLimit.DAY
    assert second.overall_code == R.OVER_LIMIT


async def test_headers_describe_the_limiting_descriptor_and_every_rule(
    service: RateLimitServicer,
) -> None:
    answer = await ask(service, request({"api_key": "x"}, {"tenant": "t", "plan": "gold"}))
    headers = {h.key: h.value for h in answer.response_headers_to_add}
    assert headers == {
        "x-ratelimit-limit": "3",
        "x-ratelimit-remaining": "2",
        "x-ratelimit-reset": "50",
        "ratelimit-policy": '"edge.api_key";q=3;w=60, "gold";q=100;w=3600',
        "ratelimit": '"edge.api_key";r=2;t=50, "gold";r=99;t=3590',
    }


async def test_headers_can_be_turned_off() -> None:
    config = parse_rate_limit_files([("edge.yaml", CONFIG)])
    quiet = RateLimitServicer(
        lambda: config, InMemoryRequestCounter(), FakeClock(START), headers=False
    )
    answer = await ask(quiet, request({"api_key": "x"}))
    assert (answer.statuses[0].limit_remaining, list(answer.response_headers_to_add)) == (2, [])


async def test_an_unknown_domain_limits_nothing(service: RateLimitServicer) -> None:
    answer = await ask(service, request({"api_key": "k"}, domain="other"))
    assert answer.overall_code == R.OK
    assert not answer.statuses[0].HasField("current_limit")


async def test_the_shipped_policys_descriptors_limit_user_ids() -> None:
    policy = parse_policy(SHIPPED_POLICY.read_text(), str(SHIPPED_POLICY))
    service = RateLimitServicer(
        lambda: policy.rate_limits, InMemoryRequestCounter(), FakeClock(START)
    )
    answer = await ask(service, request({"user_id": "u1"}, domain=policy.domain))
    assert answer.statuses[0].current_limit.requests_per_unit == 200
    assert answer.statuses[0].limit_remaining == 199


ENTRIES = "descriptors[0].entries"


def entry(*pair: str) -> RateLimitDescriptor:
    d = RateLimitDescriptor()
    if pair:
        d.entries.add(key=pair[0], value=pair[1])
    return d


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (pb.RateLimitRequest(descriptors=[entry("a", "b")]), "domain"),
        (pb.RateLimitRequest(domain="edge"), "descriptors"),
        (pb.RateLimitRequest(domain="edge", descriptors=[entry()]), ENTRIES),
        (pb.RateLimitRequest(domain="edge", descriptors=[entry("", "v")]), ENTRIES),
    ],
)
def test_bad_requests_name_the_field(req: pb.RateLimitRequest, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        decode(req)
    assert [v.field for v in caught.value.violations] == [field]
