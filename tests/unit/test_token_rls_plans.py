"""ShouldRateLimit's remembered plans: a reload, the wire path and the bounds (ADR 0029)."""

from __future__ import annotations

import pytest

from leaky.vendor.envoy.service.ratelimit.v3 import rls_pb2 as pb
from leaky_tokens.runtime.errors import InvalidArgumentError
from leaky_tokens.token.adapters.in_memory_rate_counter import InMemoryRequestCounter
from leaky_tokens.token.domain.rls_config import RateLimitConfig
from leaky_tokens.token.domain.rls_parse import parse_rate_limit_files
from leaky_tokens.token.rls_servicer import MAX_CACHED_REQUEST, RateLimitServicer
from tests.support.fakes import FakeClock
from tests.unit.test_token_rls_decision import START, request

R = pb.RateLimitResponse


def config(per_minute: int) -> RateLimitConfig:
    text = f"""
domain: edge
descriptors:
  - key: api_key
    rate_limit: {{unit: minute, requests_per_unit: {per_minute}}}
"""
    return parse_rate_limit_files([("edge.yaml", text)])


async def test_a_reload_applies_to_a_request_answered_before() -> None:
    rules = [config(3)]
    service = RateLimitServicer(lambda: rules[0], InMemoryRequestCounter(), FakeClock(START))
    data = request({"api_key": "k"}).SerializeToString()
    first = await service.from_wire(data, None)  # type: ignore[arg-type]
    assert first.statuses[0].current_limit.requests_per_unit == 3
    rules[0] = config(50)  # what a policy reload does: a new config object
    again = await service.from_wire(data, None)  # type: ignore[arg-type]
    assert again.statuses[0].current_limit.requests_per_unit == 50
    assert again.statuses[0].limit_remaining == 48  # the same counter, under the new limit


async def test_the_wire_path_answers_as_the_message_path() -> None:
    fixed = config(3)
    by_message = RateLimitServicer(lambda: fixed, InMemoryRequestCounter(), FakeClock(START))
    by_wire = RateLimitServicer(lambda: fixed, InMemoryRequestCounter(), FakeClock(START))
    for hits in (1, 2, 1):
        req = request({"api_key": "k"}, {"api_key": "j"}, hits=hits)
        expected = await by_message.ShouldRateLimit(req, None)  # type: ignore[arg-type]
        got = await by_wire.from_wire(req.SerializeToString(), None)  # type: ignore[arg-type]
        assert got == expected
    assert got.overall_code == R.OVER_LIMIT


async def test_bytes_that_are_not_a_request_are_invalid_argument() -> None:
    fixed = config(3)
    service = RateLimitServicer(lambda: fixed, InMemoryRequestCounter(), FakeClock(START))
    with pytest.raises(InvalidArgumentError) as caught:
        await service.from_wire(b"\xff\xff\xff", None)  # type: ignore[arg-type]
    assert [v.field for v in caught.value.violations] == ["request"]
    assert service.plans_cached == 0


async def test_a_bad_request_is_refused_every_time_and_never_remembered() -> None:
    fixed = config(3)
    service = RateLimitServicer(lambda: fixed, InMemoryRequestCounter(), FakeClock(START))
    data = request({"": "no key"}).SerializeToString()
    for _ in range(2):
        with pytest.raises(InvalidArgumentError):
            await service.from_wire(data, None)  # type: ignore[arg-type]
    assert service.plans_cached == 0


async def test_remembered_plans_are_bounded_in_number_and_request_size() -> None:
    fixed = config(1000)
    service = RateLimitServicer(
        lambda: fixed, InMemoryRequestCounter(), FakeClock(START), cache_size=2
    )
    big = request({"api_key": "x" * MAX_CACHED_REQUEST}).SerializeToString()
    await service.from_wire(big, None)  # type: ignore[arg-type]
    again = await service.from_wire(big, None)  # type: ignore[arg-type]
    assert again.statuses[0].limit_remaining == 998  # answered, counted, not remembered
    assert service.plans_cached == 0
    for user in ("a", "b", "c"):
        await service.from_wire(request({"api_key": user}).SerializeToString(), None)  # type: ignore[arg-type]
    assert service.plans_cached == 2


async def test_a_domain_the_config_does_not_know_is_counted_as_other() -> None:
    from prometheus_client import CollectorRegistry

    from leaky_tokens.token.rls_servicer import RlsMetrics

    registry = CollectorRegistry()
    fixed = config(3)
    service = RateLimitServicer(
        lambda: fixed, InMemoryRequestCounter(), FakeClock(START), metrics=RlsMetrics(registry)
    )
    for domain in ("edge", "made-up-1", "made-up-2"):
        await service.ShouldRateLimit(request({"api_key": "k"}, domain=domain), None)  # type: ignore[arg-type]

    def count(domain: str) -> float | None:
        labels = {"domain": domain, "code": "OK"}
        return registry.get_sample_value("leaky_token_rls_decisions_total", labels)

    assert count("edge") == 1
    assert count("other") == 2  # one series for every unknown domain, not one each
    assert count("made-up-1") is None
